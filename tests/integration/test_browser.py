"""MiniWoB in real headless Chromium (miniwob/<task>-v1): clicks and typing land where the UI
action space says, a killed or hung browser is replaced and counted, and no browser outlives its
env or its process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from actors import EnvConfig
from actors.browser import element_centre
from actors.config import BrowserConfig
from actors.envs import EnvVector, describe_env, make_env
from conftest import wait_until

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists("/usr/bin/chromedriver"), reason="chromium-driver is not installed"),
]

FINE = BrowserConfig(grid_rows=42, grid_cols=32)  # 5x5-pixel cells: a cell centre is on the element


def element(info: dict, tag: str, text: str | None = None) -> dict:
    found = [e for e in info["dom_elements"] if e["tag"].lower() == tag and (text is None or e["text"] == text)]
    assert found, f"no {tag} {text!r} on the page: {[(e['tag'], e['text']) for e in info['dom_elements']]}"
    return found[0]


def tap(env, elem: dict) -> int:
    return env.unwrapped.ui_actions.tap_index(*element_centre(elem))


def alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


@pytest.fixture(scope="module")
def click_button():
    env = make_env(EnvConfig(id="miniwob/click-button-v1", browser=FINE))
    yield env
    env.close()


def test_observations_are_the_resized_screen_and_the_instruction(click_button):
    obs, info = click_button.reset(seed=1)
    assert obs.shape == (105, 80, 3) and obs.dtype == np.uint8 and obs.std() > 0  # a page, not a black frame
    target = dict(info["fields"])["target"]
    assert info["instruction"] == f'Click on the "{target}" button.'
    assert info["text_candidates"][0] == target
    tokens = info["instruction_tokens"]
    assert tokens.shape == (32,) and tokens.dtype == np.int32 and (tokens[:5] > 0).all() and not tokens[5:].any()
    spaces = describe_env(EnvConfig(id="miniwob/click-button-v1", browser=FINE))
    assert spaces.obs_shape == (105, 80, 3) and spaces.action_space.num_actions == 42 * 32 + 2 + 4 + 3


def test_clicking_the_named_buttons_centre_solves_click_button_and_another_button_fails_it(click_button):
    _, info = click_button.reset(seed=2)
    target = dict(info["fields"])["target"]
    _, reward, terminated, truncated, step_info = click_button.step(tap(click_button, element(info, "button", target)))
    assert reward == 1.0 and terminated and not truncated and step_info["raw_reward"] == 1.0
    _, info = click_button.reset(seed=3)
    target = dict(info["fields"])["target"]
    wrong = next(e for e in info["dom_elements"] if e["tag"].lower() == "button" and e["text"] != target)
    _, reward, terminated, _, step_info = click_button.step(tap(click_button, wrong))
    assert reward == 0.0 and terminated and step_info["raw_reward"] < 0


def test_typed_text_lands_in_the_field_and_submitting_it_solves_enter_text():
    env = make_env(EnvConfig(id="miniwob/enter-text-v1", browser=FINE))
    try:
        _, info = env.reset(seed=4)
        target = dict(info["fields"])["target"]
        space = env.unwrapped.ui_actions
        _, _, _, _, info = env.step(tap(env, element(info, "input_text")))
        slot = space.indices("type")[0]  # candidate slot 0: the task's field
        assert space.decode(slot).typed(info["text_candidates"]) == target
        _, reward, terminated, _, info = env.step(slot)
        assert reward == 0.0 and not terminated
        field = element(info, "input_text")  # MiniWoB's DOM snapshot does not carry typed values: ask the page
        driver = env.unwrapped.browser.instance.driver
        assert driver.execute_script(f"return document.getElementById({field['id']!r}).value") == target
        _, reward, terminated, _, _ = env.step(tap(env, element(info, "button", "Submit")))
        assert reward == 1.0 and terminated
    finally:
        env.close()


def test_a_killed_chromium_truncates_the_episode_is_counted_and_replaced():
    vector = EnvVector(EnvConfig(id="miniwob/click-button-v1", num_envs=1), seed=0)
    try:
        vector.reset()
        old = vector.envs[0].unwrapped.browser
        chromium = next(p for p in old.processes if p.name().startswith("chrom") and p.name() != "chromedriver")
        chromium.kill()
        step = vector.step(np.array([0]))
        assert step.truncated[0] and not step.terminated[0] and vector.restarts == 1
        assert wait_until(lambda: not alive(old.pids()), timeout=10)  # nothing of the old browser is left
        new = vector.envs[0].unwrapped.browser  # the vector reset it: a new browser, new episode
        assert new is not old and new.alive() and step.obs.shape == (1, 105, 80, 3)
        step = vector.step(np.array([0]))
        assert not step.truncated[0] and vector.restarts == 1
    finally:
        vector.close()


def test_a_hung_page_times_out_kills_the_browser_and_truncates():
    env = make_env(EnvConfig(id="miniwob/click-button-v1", browser=BrowserConfig(step_timeout_s=1.5)))
    try:
        env.reset(seed=0)
        browser = env.unwrapped.browser
        for process in browser.processes[1:]:  # Chromium frozen (SIGSTOP): chromedriver waits on it forever
            with contextlib.suppress(psutil.NoSuchProcess):
                process.suspend()
        start = time.monotonic()
        _, reward, terminated, truncated, info = env.step(0)
        assert truncated and not terminated and info["env_restarted"] and reward == 0.0
        assert time.monotonic() - start < 8 and env.unwrapped.restarts == 1
        assert wait_until(lambda: not alive(browser.pids()), timeout=10)
    finally:
        env.close()


def test_closing_the_env_and_killing_its_process_leave_no_browser_behind(tmp_path):
    env = make_env(EnvConfig(id="miniwob/click-button-v1"))
    env.reset(seed=0)
    pids = env.unwrapped.browser.pids()
    assert len(alive(pids)) >= 2
    env.close()
    assert wait_until(lambda: not alive(pids), timeout=10)

    # A process that owns a browser is SIGKILLed (an actor lost to OOM): chromedriver and Chromium go too.
    child = (
        "import sys, time; from actors import EnvConfig; from actors.envs import make_env\n"
        "env = make_env(EnvConfig(id='miniwob/click-button-v1')); env.reset(seed=0)\n"
        "print(' '.join(map(str, env.unwrapped.browser.pids())), flush=True); time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        pids = [int(pid) for pid in proc.stdout.readline().split()]
        assert len(alive(pids)) >= 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert wait_until(lambda: not alive(pids), timeout=15), f"left behind: {alive(pids)}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
