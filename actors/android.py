"""Android device control as a gymnasium environment, over android_env ("qfleet/Android-v0").

Discrete actions, as device-control agents (DigiRL, Digi-Q) use them, in the UI action space shared
with MiniWoB (actors/ui_actions.py): a grid of taps, four swipes, typing each of `texts` and of
`text_slots` candidates from the goal, back/home/enter, and "task complete" (ends the episode
terminated). Each maps onto android_env touch/lift steps or adb calls (`to_android`); rewards come
from the task's log rules. Observations: the screenshot resized to obs_height x obs_width, uint8
HxWxC; the goal is in `info["goal"]` (and `info["instruction"]`, `info["instruction_tokens"]`). A simulator android_env relaunches ends the episode truncated with
`info["env_restarted"]`; one that hangs past step/reset_timeout_s is closed and
`SimulatorTimeoutError` raised (the actor rebuilds the env). `simulator: fake` is android_env's
FakeSimulator (runs anywhere: tests, configs/android_fake.yaml); `emulator` launches an AVD.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import pathlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NoReturn

import gymnasium as gym
import numpy as np

from actors.config import ANDROID_ID, BUTTONS, SWIPES, AndroidConfig
from actors.errors import AndroidSetupError, SimulatorTimeoutError
from actors.ui_actions import UIAction, UIActionSpace, instruction_tokens, text_candidates

log = logging.getLogger(__name__)
# android_env logs every step of its set-up (and, at INFO, the whole process environment) through
# absl; its warnings and errors still come through.
logging.getLogger("absl").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Action:
    """What one discrete action does (see the module docstring)."""

    kind: Literal["tap", "swipe", "type", "button", "complete"]
    points: tuple[tuple[float, float], ...] = ()
    """Normalised (x, y) touch positions, in order."""
    text: str = ""
    button: str = ""


def ui_action_space(config: AndroidConfig) -> UIActionSpace:
    """The shared UI action space (actors/ui_actions.py) of this config: taps, the four swipes,
    `texts` and `text_slots`, back/home/enter, task complete."""
    return UIActionSpace(
        config.tap_rows, config.tap_cols, SWIPES, config.texts, config.text_slots, BUTTONS, complete=True
    )


def to_android(action: UIAction, config: AndroidConfig, candidates: Sequence[str] = ()) -> Action:
    """A UI action as this adapter performs it (`candidates`: the episode's typed-text slots)."""
    if action.kind == "tap":
        return Action("tap", ((action.x, action.y),))
    if action.kind == "swipe":
        half = config.swipe_length / 2
        ends = {  # (start, end) of each swipe through the centre
            "up": ((0.5, 0.5 + half), (0.5, 0.5 - half)),
            "down": ((0.5, 0.5 - half), (0.5, 0.5 + half)),
            "left": ((0.5 + half, 0.5), (0.5 - half, 0.5)),
            "right": ((0.5 - half, 0.5), (0.5 + half, 0.5)),
        }
        (x0, y0), (x1, y1) = ends[action.direction]
        steps = np.linspace(0.0, 1.0, config.swipe_points)
        return Action("swipe", tuple((float(x0 + (x1 - x0) * t), float(y0 + (y1 - y0) * t)) for t in steps))
    if action.kind == "type":
        return Action("type", text=action.typed(candidates))
    if action.kind == "key":
        return Action("button", button=action.key)
    return Action("complete")


def action_table(config: AndroidConfig) -> list[Action]:
    """Every discrete action, indexed as the action space numbers them (candidate slots type "")."""
    return [to_android(action, config) for action in ui_action_space(config).actions]


def check_emulator(config: AndroidConfig) -> None:
    """Checks an emulator launch can work on this host; raises AndroidSetupError naming what is wrong."""
    emulator, adb = config.binaries()
    for key, path in (("emulator_path", emulator), ("adb_path", adb)):
        if not path.is_file():
            _setup_error(key, f"{path} not found (is the Android SDK at sdk_root={config.sdk_root!r}?)")
        if not os.access(path, os.X_OK):
            _setup_error(key, f"{path} is not executable")
    kvm = pathlib.Path(config.kvm_device)
    if not kvm.exists():
        _setup_error(
            "kvm_device", f"{kvm} does not exist (the emulator needs KVM: a bare-metal or nested-virtualisation host)"
        )
    if not os.access(kvm, os.R_OK | os.W_OK):
        _setup_error("kvm_device", f"{kvm} is not readable and writable by this user (add it to the kvm group)")
    if not config.avd_name:
        _setup_error("avd_name", "required with simulator=emulator")
    home = pathlib.Path(config.avd_home).expanduser()
    if not (home / f"{config.avd_name}.ini").is_file():
        found = ", ".join(sorted(p.stem for p in home.glob("*.ini"))) if home.is_dir() else ""
        _setup_error("avd_name", f"AVD {config.avd_name!r} not found in {home} (found: {found or 'none'})")


def _setup_error(key: str, reason: str) -> NoReturn:
    raise AndroidSetupError(f"env.android.{key}: {reason}", setting=f"env.android.{key}")


def load_task(path: str):
    """The task proto from a textproto file; raises AndroidSetupError naming the file."""
    from android_env.proto import task_pb2
    from google.protobuf import text_format

    file = pathlib.Path(path).expanduser()
    if not file.is_file():
        _setup_error("task", f"{file} not found")
    try:
        return text_format.Parse(file.read_text(), task_pb2.Task())
    except text_format.ParseError as exc:
        _setup_error("task", f"{file}: {exc}")


def _simulator_config(config: AndroidConfig):
    from android_env.components import config_classes

    if config.simulator == "fake":
        return config_classes.FakeSimulatorConfig(
            screen_dimensions=(config.fake_screen_height, config.fake_screen_width)
        )
    check_emulator(config)
    emulator, adb = config.binaries()
    launcher = config_classes.EmulatorLauncherConfig(
        emulator_path=str(emulator),
        android_sdk_root=str(pathlib.Path(config.sdk_root).expanduser()),
        avd_name=config.avd_name,
        android_avd_home=str(pathlib.Path(config.avd_home).expanduser()),
        snapshot_name=config.snapshot,
        kvm_device=config.kvm_device,
        run_headless=True,
    )
    adb_controller = config_classes.AdbControllerConfig(adb_path=str(adb))
    return config_classes.EmulatorConfig(emulator_launcher=launcher, adb_controller=adb_controller)


def build_android_env(config: AndroidConfig, simulator=None, task=None):
    """android_env's AndroidEnv for `config` (launches the simulator). `simulator`: a ready
    simulator object to use instead of the configured one (tests inject failing fakes); `task`:
    the already loaded task proto (None: load config.task)."""
    from android_env import environment
    from android_env.components import coordinator as coordinator_lib
    from android_env.components import device_settings as device_settings_lib
    from android_env.components import task_manager as task_manager_lib
    from android_env.components.simulators.emulator import emulator_simulator
    from android_env.components.simulators.fake import fake_simulator

    task = task if task is not None else load_task(config.task)
    if simulator is None:
        settings = _simulator_config(config)
        if config.simulator == "fake":
            simulator = fake_simulator.FakeSimulator(settings)
        else:
            simulator = emulator_simulator.EmulatorSimulator(config=settings)
    task_manager = task_manager_lib.TaskManager(task)
    coordinator = coordinator_lib.Coordinator(simulator, task_manager, device_settings_lib.DeviceSettings(simulator))
    return environment.AndroidEnv(simulator=simulator, coordinator=coordinator, task_manager=task_manager)


class AndroidGymEnv(gym.Env):
    """`qfleet/Android-v0`: see the module docstring.

    Args:
        config: an AndroidConfig (or its fields as a mapping).
        simulator: tests only: a simulator object to drive instead of the configured one.
    """

    metadata = {"render_modes": []}

    def __init__(self, config: AndroidConfig | dict | None = None, simulator=None):
        if config is None or isinstance(config, dict):
            config = AndroidConfig(**(config or {}))
        self.config = config
        self.ui_actions = ui_action_space(config)
        self.actions = action_table(config)
        self.action_space = self.ui_actions.gym_space()
        channels = 1 if config.grayscale else 3
        self.observation_space = gym.spaces.Box(0, 255, (config.obs_height, config.obs_width, channels), np.uint8)
        self._task = load_task(config.task)
        self.goal = config.goal if config.goal is not None else self._task.description
        self.text_candidates = text_candidates(self.goal, (), config.text_slots)
        self._info = {
            "goal": self.goal,
            "instruction": self.goal,
            "instruction_tokens": instruction_tokens(self.goal),
            "text_candidates": self.text_candidates,
        }
        self._simulator = simulator
        self._env = None
        self._pool = None
        self._restarts_seen = 0
        self._last_obs = np.zeros(self.observation_space.shape, np.uint8)

    # -- android_env plumbing -------------------------------------------------------------------

    def _call(self, fn, timeout: float, what: str):
        """Runs fn() in the worker thread; on timeout closes the simulator and raises."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="qfleet-android")
        future = self._pool.submit(fn)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            self._abandon()
            raise SimulatorTimeoutError(
                f"android {what} took over {timeout:g} s; the simulator was closed", timeout_s=timeout
            ) from None

    def _abandon(self) -> None:
        """Closes a hung simulator from another thread (killing an emulator process) and drops the worker."""
        env, pool = self._env, self._pool
        self._env = self._pool = None
        if env is not None:
            threading.Thread(target=self._close_quietly, args=(env,), daemon=True).start()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _close_quietly(env) -> None:
        try:
            env.close()
        except Exception as exc:
            log.warning("closing a hung android simulator: %s: %s", type(exc).__name__, exc)

    def _raw_step(self, action_type: int, point: tuple[float, float] = (0.5, 0.5)):
        return self._env.step(
            {"action_type": np.array(action_type, np.int32), "touch_position": np.array(point, np.float32)}
        )

    def _adb(self, action: Action) -> None:
        from android_env.proto import adb_pb2

        request = adb_pb2.AdbRequest()
        if action.kind == "type":
            request.input_text.text = action.text
        else:
            request.press_button.button = getattr(adb_pb2.AdbRequest.PressButton, action.button.upper())
        response = self._env.execute_adb_call(request)
        if response.status != adb_pb2.AdbResponse.Status.OK:
            status = adb_pb2.AdbResponse.Status.Name(response.status)
            target = action.text or action.button
            log.warning("android %s %r: adb status %s %s", action.kind, target, status, response.error_message)

    def _observe(self, pixels: np.ndarray) -> np.ndarray:
        import cv2

        frame = np.asarray(pixels, np.uint8)
        if frame.size == 0:
            return self._last_obs
        size = (self.config.obs_width, self.config.obs_height)
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        if self.config.grayscale:
            frame = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)[..., None]
        self._last_obs = frame
        return frame

    def _failures(self) -> int:
        """Simulator failures android_env caught (each marks it for a relaunch at the next reset)."""
        stats = self._env.stats()
        return int(stats.get("relaunch_count_execute_action", 0) + stats.get("relaunch_count_fetch_observation", 0))

    # -- gymnasium API ----------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)

        def do_reset():
            if self._env is None:
                self._env = build_android_env(self.config, self._simulator, self._task)
                self._simulator = None  # an injected simulator serves the first build only
                self._restarts_seen = self._failures()
            return self._env.reset()

        timestep = self._call(do_reset, self.config.reset_timeout_s, "reset")
        self._restarts_seen = self._failures()
        return self._observe(timestep.observation["pixels"]), dict(self._info)

    def step(self, action):
        chosen = to_android(self.ui_actions.decode(action), self.config, self.text_candidates)

        def do_step():
            timesteps = []
            if chosen.kind in ("tap", "swipe"):
                for point in chosen.points:
                    timesteps.append(self._raw_step(0, point))  # TOUCH
                    if timesteps[-1].last():
                        return timesteps
            elif chosen.kind == "button" or (chosen.kind == "type" and chosen.text):
                self._adb(chosen)
            timesteps.append(self._raw_step(1))  # LIFT: ends a gesture, reads the screen
            return timesteps

        if self._env is None:
            raise RuntimeError("call reset() before step()")
        timesteps = self._call(do_step, self.config.step_timeout_s, f"step ({chosen.kind})")
        reward = float(sum(ts.reward or 0.0 for ts in timesteps))
        last = timesteps[-1]
        info = {**self._info, "action": chosen.kind}
        restarts = self._failures()
        terminated = truncated = False
        if restarts > self._restarts_seen:  # the simulator failed: relaunched at the next reset
            self._restarts_seen = restarts
            info["env_restarted"] = True
            truncated = True
        elif last.last():
            terminated, truncated = last.discount == 0.0, last.discount != 0.0
        elif chosen.kind == "complete":
            terminated = True
        return self._observe(last.observation["pixels"]), reward, terminated, truncated, info

    def close(self) -> None:
        env, pool = self._env, self._pool
        self._env = self._pool = None
        if pool is not None:
            pool.shutdown(wait=True)
        if env is not None:
            self._close_quietly(env)


def register() -> None:
    """Registers qfleet/Android-v0 with gymnasium (once)."""
    if ANDROID_ID not in gym.registry:
        gym.register(ANDROID_ID, entry_point=AndroidGymEnv, disable_env_checker=True)
