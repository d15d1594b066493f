"""qfleet/Android-v0 over android_env's own FakeSimulator: where actions land, what observations
look like, a failing or hung simulator, and emulator launch settings that cannot work."""

from __future__ import annotations

import time

import numpy as np
import pytest
from android_env.components import config_classes, errors
from android_env.components.simulators.fake import fake_simulator

from actors import EnvConfig
from actors.android import AndroidGymEnv, SimulatorTimeoutError, action_table, check_emulator
from actors.config import AndroidConfig
from actors.envs import EnvVector, describe_env
from actors.spec import UnsupportedEnvError

SCREEN = (240, 160)  # the fake device's (height, width)


class RecordingAdb(fake_simulator.FakeAdbController):
    def __init__(self, commands: list[list[str]]):
        super().__init__(config_classes.AdbControllerConfig())
        self.commands = commands

    def execute_command(self, args, timeout=None, device_specific=True):
        self.commands.append(list(args))
        return super().execute_command(args, timeout, device_specific)


class RecordingSimulator(fake_simulator.FakeSimulator):
    """android_env's FakeSimulator, keeping what it was sent (and failing when told to)."""

    def __init__(self, touch_delay_s: float = 0.0):
        super().__init__(config_classes.FakeSimulatorConfig(screen_dimensions=SCREEN))
        self.touches: list[tuple[int, int, bool]] = []
        self.touch_delay_s = touch_delay_s
        self.fail_screenshots = 0  # the next N screenshots raise
        self.adb_commands: list[list[str]] = []  # of every adb controller android_env creates

    def create_adb_controller(self):
        return RecordingAdb(self.adb_commands)

    def send_touch(self, touches):
        time.sleep(self.touch_delay_s)
        self.touches += [(x, y, down) for x, y, down, _ in touches]

    def _get_screenshot_impl(self):
        if self.fail_screenshots > 0:
            self.fail_screenshots -= 1
            raise errors.ReadObservationError("the fake screen went black")
        return super()._get_screenshot_impl()


def env_with(simulator, **changes) -> AndroidGymEnv:
    config = AndroidConfig(tap_rows=3, tap_cols=4, texts=["hello world"], **changes)
    env = AndroidGymEnv(config, simulator=simulator)
    env.reset(seed=0)
    if isinstance(simulator, RecordingSimulator):
        simulator.touches.clear()  # android_env lifts every finger at reset
    return env


def test_taps_land_on_the_grid_and_swipes_drag_through_the_centre():
    sim = RecordingSimulator()
    env = env_with(sim)
    h, w = SCREEN
    try:
        # Tap row 1, column 2 of a 3x4 grid: the centre of that cell, then a lift.
        env.step(1 * 4 + 2)
        (x, y, down), lift = sim.touches[0], sim.touches[1]
        assert (x, y) == (int(2.5 / 4 * w), int(1.5 / 3 * h)) and down and not lift[2]
        sim.touches.clear()
        env.step(12)  # swipe up: bottom to top through the centre, x fixed, then a lift
        drag = [(x, y) for x, y, down in sim.touches if down]
        assert len(drag) == 5 and not sim.touches[-1][2]
        assert {x for x, _ in drag} == {int(0.5 * w)}
        assert [y for _, y in drag] == sorted((y for _, y in drag), reverse=True)
        assert drag[0][1] == int(0.75 * h) and drag[-1][1] == int(0.25 * h)
        sim.touches.clear()
        env.step(15)  # swipe right
        drag = [(x, y) for x, y, down in sim.touches if down]
        assert drag[0][0] < drag[-1][0] and {y for _, y in drag} == {int(0.5 * h)}
    finally:
        env.close()


def test_text_and_keys_go_through_adb_and_task_complete_ends_the_episode():
    sim = RecordingSimulator()
    env = env_with(sim)
    table = action_table(env.config)
    try:
        assert env.action_space.n == 12 + 4 + 1 + 3 + 1 == len(table)
        kinds = [a.kind for a in table]
        assert kinds[16:] == ["type", "button", "button", "button", "complete"]
        env.step(16)  # type "hello world"
        env.step(17)  # back
        env.step(18)  # home
        env.step(19)  # enter
        commands = [c for c in sim.adb_commands if c[:2] == ["shell", "input"]]
        assert commands[0][:3] == ["shell", "input", "text"] and "hello" in " ".join(commands[0])
        assert [c[-1] for c in commands[1:]] == ["KEYCODE_BACK", "KEYCODE_HOME", "KEYCODE_ENTER"]
        _, _, terminated, truncated, info = env.step(20)
        assert terminated and not truncated and info["action"] == "complete"
        assert info["goal"] == "Collect the rewards the fake device logs."
    finally:
        env.close()


@pytest.mark.parametrize(("grayscale", "channels"), [(True, 1), (False, 3)])
def test_observations_are_resized_uint8_frames(grayscale, channels):
    android = AndroidConfig(obs_height=48, obs_width=40, grayscale=grayscale)
    config = EnvConfig(id="qfleet/Android-v0", num_envs=1, android=android)
    spaces = describe_env(config)  # no simulator is launched to read the spaces
    assert spaces.obs_shape == (48, 40, channels) and spaces.action_space.num_actions == 16 + 4 + 3 + 1
    assert spaces.spec.columns["obs"] == ((48, 40, channels), "uint8")
    vector = EnvVector(config, seed=0)
    try:
        obs = vector.reset()
        step = vector.step(np.array([0]))
        assert obs.shape == step.obs.shape == (1, 48, 40, channels) and step.obs.dtype == np.uint8
    finally:
        vector.close()


def test_a_failing_simulator_truncates_the_episode_is_counted_and_relaunched():
    sim = RecordingSimulator()
    env = env_with(sim)
    sim.fail_screenshots = 1
    try:
        _, reward, terminated, truncated, info = env.step(0)
        assert truncated and not terminated and info["env_restarted"] and reward == 0.0
        obs, _ = env.reset()  # android_env relaunches the simulator here
        assert obs.shape == (64, 64, 1)
        _, _, terminated, truncated, info = env.step(0)
        assert not truncated and "env_restarted" not in info
    finally:
        env.close()


def test_the_actor_vector_counts_the_restart_and_ends_windows_there():
    config = EnvConfig(id="qfleet/Android-v0", num_envs=1, android=AndroidConfig())
    vector = EnvVector(config, seed=0)
    try:
        vector.reset()
        simulator = vector.envs[0].unwrapped._env._coordinator._simulator
        healthy = simulator._get_screenshot_impl
        calls = []

        def fail_once():  # the screen fails once; the relaunched simulator works
            calls.append(1)
            if len(calls) == 1:
                raise errors.ReadObservationError("the fake screen went black")
            return healthy()

        simulator._get_screenshot_impl = fail_once
        step = vector.step(np.array([0]))
        assert step.truncated[0] and vector.restarts == 1
        assert step.episodes and step.obs.shape == (1, 64, 64, 1)  # a new episode started, relaunched
    finally:
        vector.close()


def test_a_hung_step_times_out_closes_the_simulator_and_the_vector_rebuilds_it():
    sim = RecordingSimulator(touch_delay_s=5.0)
    env = env_with(sim, step_timeout_s=0.5)
    start = time.monotonic()
    with pytest.raises(SimulatorTimeoutError, match="over 0.5 s"):
        env.step(0)
    assert time.monotonic() - start < 3.0
    env.close()


def test_emulator_launch_settings_are_checked_with_named_errors(tmp_path):
    sdk = tmp_path / "sdk"
    with pytest.raises(UnsupportedEnvError, match="env.android.emulator_path: .*sdk/emulator/emulator not found"):
        check_emulator(AndroidConfig(simulator="emulator", sdk_root=str(sdk), avd_name="pixel"))
    for binary in ("emulator/emulator", "platform-tools/adb"):
        (sdk / binary).parent.mkdir(parents=True)
        (sdk / binary).write_text("#!/bin/sh\n")
        (sdk / binary).chmod(0o755)
    kvm = tmp_path / "kvm"
    with pytest.raises(UnsupportedEnvError, match=f"env.android.kvm_device: {kvm} does not exist"):
        check_emulator(AndroidConfig(simulator="emulator", sdk_root=str(sdk), avd_name="pixel", kvm_device=str(kvm)))
    kvm.write_text("")
    avds = tmp_path / "avd"
    avds.mkdir()
    (avds / "other.ini").write_text("")
    launch = AndroidConfig(
        simulator="emulator", sdk_root=str(sdk), avd_name="pixel", kvm_device=str(kvm), avd_home=str(avds)
    )
    with pytest.raises(UnsupportedEnvError, match="AVD 'pixel' not found in .* \\(found: other\\)"):
        check_emulator(launch)
    (avds / "pixel.ini").write_text("")
    check_emulator(launch)  # every setting checks out


def test_a_missing_task_file_is_named():
    with pytest.raises(UnsupportedEnvError, match="env.android.task: .*nope.textproto not found"):
        describe_env(EnvConfig(id="qfleet/Android-v0", android=AndroidConfig(task="nope.textproto")))


def test_the_shared_ui_action_space_maps_onto_android_touches_and_goal_text():
    # The same UIActionSpace layout as MiniWoB's: a tap index lands on the same normalised point on
    # both platforms, and candidate slots type the goal's phrases through adb.
    sim = RecordingSimulator()
    env = AndroidGymEnv(
        AndroidConfig(tap_rows=3, tap_cols=4, text_slots=2, goal='Search for "blue whale"'), simulator=sim
    )
    try:
        _, info = env.reset(seed=0)
        assert info["instruction"] == 'Search for "blue whale"' and info["text_candidates"] == ["blue whale", "Search"]
        assert info["instruction_tokens"].shape == (32,) and info["instruction_tokens"][3] > 0
        space = env.ui_actions
        assert space.n == env.action_space.n == env.config.num_actions == 12 + 4 + 2 + 3 + 1
        sim.touches.clear()
        index = space.tap_index(0.6, 0.2)  # row 0, column 2
        env.step(index)
        h, w = SCREEN
        assert sim.touches[0][:2] == (int(2.5 / 4 * w), int(0.5 / 3 * h))
        env.step(space.indices("type")[0])  # slot 0: "blue whale"
        typed = [c for c in sim.adb_commands if c[:3] == ["shell", "input", "text"]]
        assert typed and "blue" in " ".join(typed[-1])
        before = len(sim.adb_commands)
        env.step(space.indices("type")[1])  # slot 1: "Search"
        assert len(sim.adb_commands) > before
    finally:
        env.close()
