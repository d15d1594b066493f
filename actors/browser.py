"""MiniWoB++ web tasks in headless Chromium as gymnasium environments ("miniwob/<task>-v1").

Each env owns one Chromium (launched through Debian's chromedriver, never a downloaded one) on
its first reset, driven by the `miniwob` package's `SeleniumInstance`; the task pages are files
inside that package (file:// URLs: nothing is fetched). Actions are the shared UI action space
(actors/ui_actions.py) mapped onto MiniWoB's own: CLICK_COORDS at a grid cell's centre,
SCROLL_UP/DOWN_COORDS at the centre, PRESS_KEY, TYPE_TEXT. Observations: the 210x160 task area
resized to obs_height x obs_width, uint8 HxWx3; `info` carries the instruction (text and
`instruction_tokens`), the episode's text candidates, the task's fields and the page's elements
(`dom_elements`, for behaviour policies that follow the instruction).

Faults: a step that runs past `step_timeout_s` (a hung page) or whose browser is gone (chromium or
chromedriver killed) kills what is left of that browser and ends the episode truncated with
`info["env_restarted"]` (the actor counts it); the next reset launches a new browser. A reset past
`reset_timeout_s` kills the browser and raises `BrowserTimeoutError` (the actor rebuilds the env).
chromedriver and Chromium are started with a parent-death signal (util-linux's setpriv, when one
that takes --pdeathsig is found; otherwise a prctl preexec_fn for chromedriver only, with a
warning), so a killed actor takes its browsers with it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import hashlib
import logging
import os
import pathlib
import shlex
import signal
import stat
import tempfile
import threading
import time
from typing import Any

import gymnasium as gym
import numpy as np

from actors.config import MINIWOB_PREFIX, BrowserConfig
from actors.errors import BrowserSetupError, BrowserTimeoutError, UnsupportedEnvError
from actors.ui_actions import UIAction, UIActionSpace, instruction_tokens, text_candidates
from replay import pdeathsig_setpriv

log = logging.getLogger(__name__)

TASK_HEIGHT, TASK_WIDTH = 210, 160
"""The task area of a MiniWoB page, in CSS pixels (what observations and clicks refer to)."""
MINIWOB_KEYS = {"enter": "<Enter>", "backspace": "<Backspace>", "tab": "<Tab>", "escape": "<Escape>"}
"""UI key names -> MiniWoB's PRESS_KEY names."""
_WINDOW = (500, 400)  # headless window: its inner height must hold the 210-pixel task area


def task_name(env_id: str) -> str:
    """ "miniwob/click-button-v1" -> "click-button" (UnsupportedEnvError for other ids)."""
    name = env_id[len(MINIWOB_PREFIX) :] if env_id.startswith(MINIWOB_PREFIX) else ""
    if not name.endswith("-v1") or len(name) <= 3:
        raise UnsupportedEnvError(f"env.id={env_id!r}: expected miniwob/<task>-v1", env_id=env_id)
    return name[:-3]


def _html_dir() -> pathlib.Path:
    import miniwob.selenium_instance

    return miniwob.selenium_instance.HTML_DIR / "miniwob"


def check_task(env_id: str, config: BrowserConfig) -> str:
    """The task name of `env_id`, after checking the task page and the browser binaries exist."""
    task = task_name(env_id)
    try:
        html = _html_dir()
    except ImportError as exc:
        raise UnsupportedEnvError(f"env.id={env_id!r}: the miniwob package is not installed ({exc})", env_id=env_id)
    if not (html / f"{task}.html").is_file():
        raise UnsupportedEnvError(f"env.id={env_id!r}: no MiniWoB task {task!r} in {html}", env_id=env_id)
    for key in ("chromium_path", "chromedriver_path"):
        path = pathlib.Path(getattr(config, key))
        if not path.is_file():
            raise BrowserSetupError(
                f"env.browser.{key}: {path} not found (scripts/setup.sh installs chromium and chromium-driver)",
                setting=f"env.browser.{key}",
            )
    return task


def _running(process) -> bool:
    """Whether a process still runs (a zombie has ended: only its parent has not collected it)."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


_launchers: dict[str, str] = {}
_launchers_lock = threading.Lock()
_warned_no_setpriv = False


def _launcher_dir() -> pathlib.Path | None:
    """This user's folder of launcher scripts, $TMPDIR/qfleet-<uid>/launchers (0700), reused by
    every process so that nothing piles up there when processes are SIGKILLed. None (and a
    warning) if a folder on that path belongs to another user or others may write into it: a
    script there could be replaced by someone else's."""
    uid = os.getuid()
    top = pathlib.Path(tempfile.gettempdir()) / f"qfleet-{uid}"
    directory = top / "launchers"
    for path in (top, directory):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or stat.S_IMODE(info.st_mode) & 0o077:
            log.warning(
                "%s is not a private directory of this user (owner %d, mode %s): browsers start without "
                "a parent-death signal",
                path,
                info.st_uid,
                oct(stat.S_IMODE(info.st_mode)),
            )
            return None
    return directory


def _dying_launcher(executable: str) -> str:
    """A script that runs `executable` with a parent-death signal (SIGKILL, by util-linux's setpriv),
    so it ends when the thread that started it does: Chromium does not notice its chromedriver's
    end on its own, nor chromedriver its actor's. setpriv sets the signal and execs, so no Python
    runs between fork and exec in the actor (unsafe beside gRPC's threads) and the pid stays the
    one the starter sees.

    Scripts live in this user's private launcher folder (`_launcher_dir`), named by a hash of what
    they run, and are written to a temporary file renamed into place: processes share them and a
    killed process leaves nothing new behind. Where no setpriv takes `--pdeathsig` (missing or
    older than util-linux 2.33) `executable` is returned unchanged, with a warning once: the
    browser still starts, without the signal (chromedriver then gets a prctl preexec_fn)."""
    global _warned_no_setpriv
    with _launchers_lock:
        if executable in _launchers:
            return _launchers[executable]
        setpriv = pdeathsig_setpriv()
        if setpriv is None:
            if not _warned_no_setpriv:
                _warned_no_setpriv = True
                log.warning(
                    "no setpriv with --pdeathsig (util-linux >= 2.33; scripts/setup.sh installs it): "
                    "a Chromium whose actor is killed hard may keep running"
                )
            return executable
        directory = _launcher_dir()
        if directory is None:
            _launchers[executable] = executable
            return executable
        text = f'#!/bin/sh\nexec {shlex.quote(setpriv)} --pdeathsig KILL -- {shlex.quote(executable)} "$@"\n'
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        script = directory / f"{pathlib.Path(executable).name}-{digest}"
        descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".writing-")
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(text)
            os.chmod(temporary, 0o700)
            os.replace(temporary, script)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _launchers[executable] = str(script)
        return _launchers[executable]


def _die_with_parent() -> None:
    """Runs in chromedriver's child process before exec when setpriv is missing (the fallback):
    SIGKILL it when its parent thread ends."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _chromedriver_service(chromedriver_path: str):
    """selenium's Service for chromedriver, started so that it dies with this browser's thread."""
    from selenium.webdriver.chrome.service import Service

    launcher = _dying_launcher(chromedriver_path)
    if launcher != chromedriver_path:
        return Service(executable_path=launcher)
    return Service(executable_path=chromedriver_path, popen_kw={"preexec_fn": _die_with_parent})


class Browser:
    """One headless Chromium on one MiniWoB task, every call in its own worker thread.

    The thread that launches chromedriver is the one its parent-death signal follows, so it is
    this browser's thread for its whole life. `processes` are the chromedriver and Chromium
    processes it started (psutil handles: killing one never hits a reused pid).
    """

    def __init__(self, task: str, config: BrowserConfig):
        self.task, self.config = task, config
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="qfleet-browser")
        self.instance = None
        self.processes: list = []

    def call(self, fn, timeout: float):
        """fn() in the browser's thread; concurrent.futures.TimeoutError past `timeout`."""
        return self._pool.submit(fn).result(timeout=timeout)

    def launch(self) -> None:
        """Starts chromedriver and Chromium on the task page (in the browser's thread)."""
        import psutil
        from miniwob.selenium_instance import SeleniumInstance
        from selenium import webdriver

        config = self.config
        browser = self

        class Instance(SeleniumInstance):
            def create_driver(self):  # miniwob's, with our binaries and flags
                options = webdriver.ChromeOptions()
                options.binary_location = _dying_launcher(config.chromium_path)
                for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
                    options.add_argument(arg)
                options.add_argument(f"--window-size={_WINDOW[0]},{_WINDOW[1]}")
                self.driver = webdriver.Chrome(service=_chromedriver_service(config.chromedriver_path), options=options)
                driver_process = psutil.Process(self.driver.service.process.pid)
                browser.processes = [driver_process, *driver_process.children(recursive=True)]
                self.driver.get(self.url)
                self.inner_width, self.inner_height = self.driver.execute_script(
                    "return [window.innerWidth, window.innerHeight];"
                )

        instance = Instance(0, self.task, headless=True, threading=False)
        instance.start()  # not threading: miniwob's start() is create_driver()
        self.instance = instance

    def alive(self) -> bool:
        """Whether chromedriver and the main Chromium process still run."""
        return len(self.processes) >= 2 and all(_running(p) for p in self.processes[:2])

    def pids(self) -> list[int]:
        """Pids of the chromedriver and Chromium processes started (live or not)."""
        return [p.pid for p in self.processes]

    def kill(self) -> None:
        """Kills every process of this browser (what a hung or broken one needs) and drops its thread."""
        import psutil

        for process in list(self.processes):
            with contextlib.suppress(psutil.Error):
                self.processes += [p for p in process.children(recursive=True) if p not in self.processes]
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                process.kill()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(_running(p) for p in self.processes):
            time.sleep(0.05)
        with contextlib.suppress(Exception):  # reap chromedriver (our child): no zombie left behind
            self.processes[0].wait(timeout=0.5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.instance = None

    def close(self, timeout: float = 10.0) -> None:
        """Quits the browser (chromedriver ends Chromium), then kills whatever is left."""
        if self.instance is not None:
            instance = self.instance
            with contextlib.suppress(Exception):
                self.call(instance.driver.quit, timeout)
        self.kill()


class BrowserGymEnv(gym.Env):
    """`miniwob/<task>-v1`: see the module docstring.

    Args:
        task: the MiniWoB task name, e.g. "click-button".
        config: a BrowserConfig (or its fields as a mapping).
    """

    metadata = {"render_modes": []}

    def __init__(self, task: str, config: BrowserConfig | dict | None = None):
        from miniwob.action import ActionSpaceConfig, ActionTypes

        if config is None or isinstance(config, dict):
            config = BrowserConfig(**(config or {}))
        self.task, self.config = task, config
        self.ui_actions = UIActionSpace(
            config.grid_rows, config.grid_cols, config.swipes, config.texts, config.text_slots, config.keys
        )
        self.action_space = self.ui_actions.gym_space()
        self.observation_space = gym.spaces.Box(0, 255, (config.obs_height, config.obs_width, 3), np.uint8)
        types = [ActionTypes.NONE, ActionTypes.CLICK_COORDS, ActionTypes.SCROLL_UP_COORDS]
        types += [ActionTypes.SCROLL_DOWN_COORDS, ActionTypes.PRESS_KEY, ActionTypes.TYPE_TEXT]
        self.miniwob_actions = ActionSpaceConfig(
            action_types=types,
            screen_width=TASK_WIDTH,
            screen_height=TASK_HEIGHT,
            allowed_keys=[MINIWOB_KEYS[key] for key in config.keys] or ["<Enter>"],
        )
        self.browser: Browser | None = None
        self.restarts = 0
        """Browsers this env replaced after a hung or crashed step."""
        self.text_candidates: list[str] = []
        self._info: dict[str, Any] = {}
        self._last_obs = np.zeros(self.observation_space.shape, np.uint8)

    # -- the mapping onto MiniWoB's action space ----------------------------------------------------

    def to_miniwob(self, action: UIAction) -> dict[str, Any]:
        """A UI action as a MiniWoB action (a dict of its Dict action space)."""
        types = self.miniwob_actions.action_types
        if action.kind == "tap":
            coords = np.array([action.x * TASK_WIDTH, action.y * TASK_HEIGHT], np.float32)
            return {"action_type": types.index("CLICK_COORDS"), "coords": coords}
        if action.kind == "swipe":  # a finger swiping up shows what is below: the wheel scrolls down
            kind = "SCROLL_DOWN_COORDS" if action.direction == "up" else "SCROLL_UP_COORDS"
            return {"action_type": types.index(kind), "coords": np.array([TASK_WIDTH / 2, TASK_HEIGHT / 2])}
        if action.kind == "key":
            return {"action_type": types.index("PRESS_KEY"), "key": self.config.keys.index(action.key)}
        if action.kind == "type":
            text = action.typed(self.text_candidates)
            if text:
                return {"action_type": types.index("TYPE_TEXT"), "text": text}
        return {"action_type": types.index("NONE")}

    # -- observations -----------------------------------------------------------------------------

    def _observe(self, observation: dict, reset: bool) -> np.ndarray:
        import cv2

        if reset:
            instruction = observation["utterance"]
            fields = list(observation["fields"])
            self.text_candidates = text_candidates(instruction, fields, self.config.text_slots)
            self._info = {
                "instruction": instruction,
                "instruction_tokens": instruction_tokens(
                    instruction, self.config.instruction_length, self.config.instruction_vocab
                ),
                "text_candidates": list(self.text_candidates),
                "fields": fields,
            }
        self._info["dom_elements"] = observation["dom_elements"]
        size = (self.config.obs_width, self.config.obs_height)
        frame = cv2.resize(np.asarray(observation["screenshot"], np.uint8), size, interpolation=cv2.INTER_AREA)
        self._last_obs = frame
        return frame

    # -- gymnasium API ----------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        page_seed = int(self.np_random.integers(2**31))  # MiniWoB's Math.seedrandom for this episode
        if self.browser is None:
            self.browser = Browser(self.task, self.config)
        browser = self.browser

        def do_reset():
            if browser.instance is None:
                browser.launch()
            observations, infos = [{}], [{}]
            browser.instance.reset(observations, infos, page_seed)
            return observations[0]

        try:
            observation = browser.call(do_reset, self.config.reset_timeout_s)
        except concurrent.futures.TimeoutError:
            self._drop_browser()
            raise BrowserTimeoutError(
                f"browser reset took over {self.config.reset_timeout_s:g} s; the browser was killed",
                timeout_s=self.config.reset_timeout_s,
            ) from None
        except Exception:
            self._drop_browser()
            raise
        return self._observe(observation, reset=True), dict(self._info)

    def step(self, action):
        if self.browser is None or self.browser.instance is None:
            raise RuntimeError("call reset() before step()")
        chosen = self.ui_actions.decode(action)
        miniwob_action = self.to_miniwob(chosen)
        browser, config = self.browser, self.miniwob_actions

        def do_step():
            observations, rewards, dones, infos = [{}], [0.0], [False], [{}]
            browser.instance.step(miniwob_action, config, observations, rewards, dones, infos)
            return observations[0], rewards[0], dones[0], infos[0]

        from selenium.common.exceptions import WebDriverException

        try:
            observation, reward, done, metadata = browser.call(do_step, self.config.step_timeout_s)
        except (concurrent.futures.TimeoutError, WebDriverException, ConnectionError) as exc:
            why = f"hung past {self.config.step_timeout_s:g} s" if isinstance(exc, TimeoutError) else "crashed"
            if not isinstance(exc, TimeoutError) and browser.alive():
                raise  # the browser runs: a fault of this step (a bad action?), not of the browser
            log.warning(
                "miniwob %s: the browser %s (%s); killed, episode truncated", self.task, why, type(exc).__name__
            )
            self._drop_browser()
            self.restarts += 1
            info = {**self._info, "env_restarted": True, "action": chosen.kind}
            return self._last_obs, 0.0, False, True, info
        if self.config.reward == "success":
            reward = 1.0 if done and metadata.get("raw_reward", 0) > 0 else 0.0
        info = {**self._info, "action": chosen.kind, "raw_reward": float(metadata.get("raw_reward") or 0.0)}
        return self._observe(observation, reset=False), float(reward), bool(done), False, info

    def _drop_browser(self) -> None:
        browser, self.browser = self.browser, None
        if browser is not None:
            browser.kill()

    def close(self) -> None:
        browser, self.browser = self.browser, None
        if browser is not None:
            browser.close()


def element_centre(element: dict) -> tuple[float, float]:
    """The normalised (x, y) centre of a MiniWoB DOM element (of `info["dom_elements"]`)."""
    x = (float(element["left"][0]) + float(element["width"][0]) / 2) / TASK_WIDTH
    y = (float(element["top"][0]) + float(element["height"][0]) / 2) / TASK_HEIGHT
    return x, y


def make_browser_env(env_id: str, config: BrowserConfig | None) -> BrowserGymEnv:
    """The env of a miniwob/<task>-v1 id (no browser is launched until its first reset).

    Raises:
        UnsupportedEnvError: an unknown task; BrowserSetupError: the browser binaries are missing.
    """
    config = config or BrowserConfig()
    return BrowserGymEnv(check_task(env_id, config), config)
