"""`EnvConfig` and `ActorsConfig`: the `env` and `actors` sections of a run config."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Literal

ANDROID_ID = "qfleet/Android-v0"
"""Android device control over android_env (actors/android.py), configured by `env.android`."""

MINIWOB_PREFIX = "miniwob/"
"""MiniWoB++ tasks in headless Chromium (actors/browser.py), e.g. "miniwob/click-button-v1",
configured by `env.browser`."""

SWIPES = ("up", "down", "left", "right")
"""Android swipe actions, in action-space order."""
BUTTONS = ("back", "home", "enter")
"""Android key actions, in action-space order."""


def imported_module(env_id: str) -> str | None:
    """The module gymnasium imports to make `env_id` ("module:Env" ids), or None."""
    return env_id.split(":", 1)[0] if ":" in env_id else None


@dataclass(frozen=True)
class AndroidConfig:
    """The `env.android` section (actors/android.py): device, task, actions and observations."""

    simulator: Literal["fake", "emulator"] = "fake"
    """fake: android_env's FakeSimulator (random screens and log lines); emulator: an Android AVD."""

    task: str = "configs/android/tasks/fake_rewards.textproto"
    """android_env task textproto (set-up, log-parsing rewards, limits); relative to the working dir."""

    goal: str | None = None
    """The goal given to the agent in info["goal"]; null: the task's description."""

    obs_height: int = 64
    """Observation height in pixels (the screenshot is resized to it)."""

    obs_width: int = 64
    """Observation width in pixels."""

    grayscale: bool = True
    """One luminance channel instead of RGB."""

    tap_rows: int = 4
    """Rows of the tap grid."""

    tap_cols: int = 4
    """Columns of the tap grid."""

    texts: list[str] = field(default_factory=list)
    """Strings the agent can type (one action each), e.g. the task's search terms."""

    text_slots: int = 0
    """Per-episode type actions after `texts`: the goal's quoted phrases and words (actors/ui_actions.py)."""

    swipe_length: float = 0.5
    """Swipe length as a fraction of the screen, through its centre."""

    swipe_points: int = 5
    """Touch positions a swipe passes through before the lift."""

    step_timeout_s: float = 30.0
    """A step taking longer than this kills the simulator; the actor rebuilds the env."""

    reset_timeout_s: float = 300.0
    """A reset (including the first launch) taking longer than this kills the simulator."""

    fake_screen_height: int = 240
    """FakeSimulator: the device screen height in pixels."""

    fake_screen_width: int = 160
    """FakeSimulator: the device screen width in pixels."""

    sdk_root: str = "~/Android/Sdk"
    """Emulator: the Android SDK root."""

    avd_name: str = ""
    """Emulator: the AVD to launch (created with avdmanager)."""

    avd_home: str = "~/.android/avd"
    """Emulator: where AVDs live."""

    emulator_path: str | None = None
    """Emulator: the emulator binary; null: SDK_ROOT/emulator/emulator."""

    adb_path: str | None = None
    """Emulator: the adb binary; null: SDK_ROOT/platform-tools/adb."""

    snapshot: str = ""
    """Emulator: a snapshot to boot from (faster resets); empty: cold boot."""

    kvm_device: str = "/dev/kvm"
    """Emulator: the KVM device (hardware acceleration is required)."""

    def __post_init__(self) -> None:
        for name in ("obs_height", "obs_width", "tap_rows", "tap_cols", "fake_screen_height", "fake_screen_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.swipe_points < 2:
            raise ValueError(f"swipe_points={self.swipe_points}: must be >= 2")
        if not 0 < self.swipe_length <= 1:
            raise ValueError(f"swipe_length={self.swipe_length}: must be in (0, 1]")
        for name in ("step_timeout_s", "reset_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be > 0")
        if any(not text for text in self.texts):
            raise ValueError("texts: empty strings cannot be typed")
        if self.text_slots < 0:
            raise ValueError(f"text_slots={self.text_slots}: must be >= 0")

    @property
    def num_actions(self) -> int:
        return self.tap_rows * self.tap_cols + len(SWIPES) + len(self.texts) + self.text_slots + len(BUTTONS) + 1

    def binaries(self) -> tuple[pathlib.Path, pathlib.Path]:
        """(emulator, adb) paths, user-expanded."""
        root = pathlib.Path(self.sdk_root).expanduser()
        emulator = (
            pathlib.Path(self.emulator_path).expanduser() if self.emulator_path else root / "emulator" / "emulator"
        )
        adb = pathlib.Path(self.adb_path).expanduser() if self.adb_path else root / "platform-tools" / "adb"
        return emulator, adb


@dataclass(frozen=True)
class BrowserConfig:
    """The `env.browser` section (actors/browser.py): MiniWoB in headless Chromium, its UI actions
    (actors/ui_actions.py) and observations."""

    obs_height: int = 105
    """Observation height in pixels (the 210x160 task area is resized to it)."""

    obs_width: int = 80
    """Observation width in pixels."""

    grid_rows: int = 12
    """Rows of the click grid over the task area."""

    grid_cols: int = 10
    """Columns of the click grid."""

    swipes: list[str] = field(default_factory=lambda: ["up", "down"])
    """Mouse-wheel scrolls, named as finger swipes ("up" shows what is further down); up/down only."""

    keys: list[str] = field(default_factory=lambda: ["enter", "backspace", "tab"])
    """Keys the agent can press (enter, backspace, tab, escape)."""

    texts: list[str] = field(default_factory=list)
    """Fixed strings the agent can type (one action each)."""

    text_slots: int = 4
    """Per-episode type actions: the task's fields, then the instruction's quoted phrases and words."""

    instruction_length: int = 32
    """Length of info["instruction_tokens"] (hashed word ids, 0-padded)."""

    instruction_vocab: int = 4096
    """Hash buckets of the instruction's word ids."""

    reward: Literal["success", "miniwob"] = "success"
    """success: 1 when the task is solved, else 0; miniwob: the package's time-decayed reward in [-1, 1]."""

    step_timeout_s: float = 10.0
    """A step taking longer than this kills the browser: the episode ends truncated, a new one starts."""

    reset_timeout_s: float = 60.0
    """A reset (including the browser's launch) taking longer than this kills the browser and raises."""

    chromium_path: str = "/usr/bin/chromium"
    """The Chromium binary (Debian's `chromium`)."""

    chromedriver_path: str = "/usr/bin/chromedriver"
    """The ChromeDriver binary (Debian's `chromium-driver`); given explicitly, so Selenium never
    looks for a driver on the internet."""

    def __post_init__(self) -> None:
        for name in ("obs_height", "obs_width", "grid_rows", "grid_cols", "instruction_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.instruction_vocab < 2:
            raise ValueError(f"instruction_vocab={self.instruction_vocab}: must be >= 2")
        if self.text_slots < 0:
            raise ValueError(f"text_slots={self.text_slots}: must be >= 0")
        for name, allowed in (("swipes", ("up", "down")), ("keys", ("enter", "backspace", "tab", "escape"))):
            given = getattr(self, name)
            if any(item not in allowed for item in given) or len(set(given)) != len(given):
                raise ValueError(f"{name}={given!r}: a web page has {', '.join(allowed)} (each at most once)")
        if any(not text for text in self.texts):
            raise ValueError("texts: empty strings cannot be typed")
        if self.reward not in ("success", "miniwob"):
            raise ValueError(f"reward={self.reward!r}: must be success or miniwob")
        for name in ("step_timeout_s", "reset_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be > 0")


@dataclass(frozen=True)
class FeaturesConfig:
    """The `env.features` section (actors/features.py, docs/digiq.md): a frozen encoder turns each
    screenshot into a feature vector in the actor, so replay and the learner see features only."""

    encoder: Literal["none", "small", "transformers"] = "none"
    """none: observations as the env gives them; small: the CNN `qfleet encoder train` saved in
    `path`; transformers: a Hugging Face vision model saved (safetensors) in `path`."""

    path: str | None = None
    """The encoder's local directory (nothing is downloaded); required unless encoder is none."""

    layer: int = -1
    """transformers: the hidden layer whose mean-pooled states are the features (0: embeddings,
    -1: the last; Python indexing); the small encoder has only -1."""

    instruction_dim: int = 32
    """Length of the instruction's embedding appended to the image features (a fixed random
    bag-of-words projection of info["instruction_tokens"]; zeros for envs without one); 0: none."""

    grid_rows: int = 0
    """Rows of the screen grid of features appended after the instruction: the encoder's spatial
    feature map average-pooled to grid_rows x grid_cols cells (each the map's channels), so the
    "spatial" critic reads what is on the screen where a tap lands (learner.critic: spatial).
    Set it to env.browser.grid_rows (the tap grid) to give each tap cell its own; 0: no grid.
    Ignored with encoder none (screenshots); the small encoder has a feature map, a transformers
    encoder has none and is refused with a grid when the config loads."""

    grid_cols: int = 0
    """Columns of that grid (0 with grid_rows 0). A grid costs rows x cols x channels float32 per
    observation (12 x 10 x 64: 30 KiB, twice that per transition with next_obs)."""

    def __post_init__(self) -> None:
        if self.encoder not in ("none", "small", "transformers"):
            raise ValueError(f"encoder={self.encoder!r}: must be none, small or transformers")
        if self.encoder != "none" and not self.path:
            raise ValueError(f"path={self.path!r}: the encoder's directory is required when encoder is {self.encoder}")
        if self.encoder == "small" and self.layer != -1:
            raise ValueError(
                f"layer={self.layer}: the small encoder has one feature layer (-1); layers are for transformers"
            )
        if self.instruction_dim < 0:
            raise ValueError(f"instruction_dim={self.instruction_dim}: must be >= 0")
        if self.grid_rows < 0 or self.grid_cols < 0 or (self.grid_rows == 0) != (self.grid_cols == 0):
            raise ValueError(
                f"grid_rows={self.grid_rows}, grid_cols={self.grid_cols}: both >= 1 for a screen grid, or both 0"
            )
        if self.encoder == "transformers" and self.grid_rows:
            raise ValueError(
                f"grid_rows={self.grid_rows}: a screen grid is pooled from the small encoder's spatial feature map; "
                "a transformers encoder has none (set grid_rows and grid_cols to 0, or use encoder small)"
            )


@dataclass(frozen=True)
class EnvConfig:
    """The environment of a run, and how many copies each actor steps."""

    id: str = "CartPole-v1"
    """Gymnasium id, e.g. "CartPole-v1", "MinAtar/Breakout-v0", "ALE/Pong-v5"; "module:Env" imports module."""

    num_envs: int = 8
    """Environments each actor steps together (one batched network forward per step)."""

    max_episode_steps: int | None = None
    """Override the env's time limit (episodes end truncated there); null: the env's own."""

    frame_stack: int = 4
    """Atari: frames stacked into each observation (HxWxC, C = frame_stack)."""

    terminal_on_life_loss: bool = False
    """Atari: end episodes when a life is lost (Nature DQN did; modern protocols do not)."""

    android: AndroidConfig | None = None
    """qfleet/Android-v0: device, task, actions, observations; null: defaults (FakeSimulator)."""

    browser: BrowserConfig | None = None
    """miniwob/<task>-v1: the browser, UI actions, observations; null: defaults."""

    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    """A frozen encoder run on every observation (Digi-Q features); default: none, raw observations."""

    allow_import: list[str] = field(default_factory=list)
    """Modules an id "module:Env" may import (and their submodules): code execution, so none by default."""

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("id='': an environment id is required")
        for name in self.allow_import:
            if not all(part.isidentifier() for part in name.split(".")):
                raise ValueError(f"allow_import={self.allow_import!r}: {name!r} is not a module name")
        module = imported_module(self.id)
        if module is not None and not any(
            module == name or module.startswith(f"{name}.") for name in self.allow_import
        ):
            raise ValueError(
                f"id={self.id!r} would import module {module!r} (running its code); "
                f"name it in env.allow_import to allow that"
            )
        if self.num_envs < 1:
            raise ValueError(f"num_envs={self.num_envs}: must be >= 1")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps={self.max_episode_steps}: must be >= 1, or null")
        if self.frame_stack < 1:
            raise ValueError(f"frame_stack={self.frame_stack}: must be >= 1")


@dataclass(frozen=True)
class ActorsConfig:
    """The env actors: how many, how they explore, how they talk to replay and the weight store."""

    num_actors: int = 2
    """Env actors (Ray actors) to run; change it on a running system with `qfleet scale --actors N`."""

    n_step: int = 3
    """Steps per transition: reward sums n discounted rewards, discount gamma^n (0 after terminal)."""

    epsilon: float = 0.4
    """Ape-X: actor i of N acts with epsilon^(1 + i * epsilon_alpha / (N - 1)) (one actor: epsilon)."""

    epsilon_alpha: float = 7.0
    """Ape-X exponent spread between the most and the least exploring actor."""

    weight_poll_steps: int = 1
    """Vector steps between switches to newer weights (fetched by a background thread, if any).
    1: every step, which costs an attribute check while nothing new has arrived. A larger value
    delays every switch by up to that many steps, and an actor whose inserts the rate limiter holds
    back makes few steps: at 50 a UTD-4 run's actors acted with version 0 for a whole 20 s bench."""

    insert_batch: int = 4096
    """Transitions per insert message (one also goes out at 4 MiB); see docs/benchmarks.md."""

    max_inserts_in_flight: int = 32
    """Unacknowledged insert messages before an actor waits (bounds how far it runs ahead)."""

    insert_retry_s: float = 10.0
    """While no shard is live, how long inserts wait for one before the batch counts as lost."""

    num_cpus: float = 1.0
    """CPUs each actor requests from Ray (on a cluster this spreads actors over nodes)."""

    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each actor requests, e.g. {actor_host: 1}."""

    max_restarts: int = -1
    """Times Ray restarts an actor whose process died (-1: always); it pulls fresh weights."""

    env_max_rebuilds: int = 5
    """Consecutive failed rebuilds of one env before its actor gives up (and is replaced)."""

    metrics_port: int | None = 0
    """Each actor serves /metrics on this port (0: a free port, recorded in Redis); null: off."""

    metrics_host: str = "127.0.0.1"
    """Interface the actors' /metrics bind to; "node": their Ray node's IP (for Prometheus on a cluster)."""

    seed: int = 0
    """Seeds environments, exploration and initial weights (actor i uses seed + i)."""

    random_before_policy: bool = True
    """In a fresh online run (no learned weights yet), step with uniform random actions while the
    policy is built in the background (torch's import and the network: ~1.7 s of CPU), as an
    untrained network acts no better; switch to it once built. Never where weights exist (a resumed
    run, an online phase after an offline one, an actor restarted after the first publish), nor
    where nothing is won (torch already loaded in the process, or an `env.features` encoder). false:
    each actor builds its policy before its first step."""

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"{name}={getattr(self, name)!r}: {why}")

        for name in ("num_actors", "n_step", "weight_poll_steps", "insert_batch", "max_inserts_in_flight"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        if not 0.0 <= self.epsilon <= 1.0:
            bad("epsilon", "must be in [0, 1]")
        if self.epsilon_alpha < 0:
            bad("epsilon_alpha", "must be >= 0")
        if self.insert_retry_s < 0:
            bad("insert_retry_s", "must be >= 0")
        if self.num_cpus < 0:
            bad("num_cpus", "must be >= 0")
        if any(not amount >= 0 for amount in self.resources.values()):
            bad("resources", "amounts must be >= 0")
        if self.max_restarts < -1:
            bad("max_restarts", "must be >= -1")
        if self.env_max_rebuilds < 1:
            bad("env_max_rebuilds", "must be >= 1")
        if self.metrics_port is not None and not 0 <= self.metrics_port < 65536:
            bad("metrics_port", "must be a port number (0: any free port), or null")
