"""`qfleet bench scaling`: a live `qfleet train`'s aggregate env steps/s as `qfleet scale` changes
its actor count, for each placement of the actors (e.g. spread over two worker nodes vs packed on
one), one layout after another on the same cluster.

For each layout it starts `qfleet train CONFIG` (a subprocess, with the layout's `actors.resources`
and the given `--set` overrides; against `--ray-address` and `--redis-url` when given, else the
embedded default), waits until the learner updates, then for each count N: scales to N, waits until
N actors report, lets `warmup_s` pass, and measures env steps/s, updates/s and the achieved UTD over
`seconds` from the run's progress records (written every second). It also counts the Ray nodes the
actors report from, and how many of them were held back by the replay's rate limiter (the learner
is then the limit, not the actors: lower `learner.updates_per_env_step` to measure the actors), and
env steps/s per node from the actors' own reports.

With `local_cluster`, it first starts the multi-node topology of README's "Deploy on a Ray cluster"
on this machine (system/bench/local_cluster.py: a head, worker nodes A and B, an external Redis with
a password, fresh secrets), runs every layout on it, and stops it however the bench ends; its
default layouts are LOCAL_LAYOUTS: the actors spread over both worker nodes vs all on node B.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from system.bench.children import interrupt_on_sigterm, start_child, stop_child
from system.bench.cluster_topology import ACTOR_NODE
from system.bench.learning import ROOT
from system.bench.local_cluster import LocalDeployment, node_resource
from system.config import ConfigError

START_TIMEOUT_S = 300.0
"""How long a layout's run may take to start learning (a shard restoring, a busy machine)."""

ACTORS_TIMEOUT_S = 120.0
"""How long newly wanted actors may take to report (the fleet warns of missing resources at 60 s)."""

LOCAL_LAYOUTS: dict[str, str | None] = {
    "spread": "{actors: 1}",
    "one-node": f"{{actors: 1, {node_resource(ACTOR_NODE)}: 1}}",
}
"""`--local-cluster`'s layouts: the topology's own placement (an `actors` slot on any worker node;
the fleet asks Ray to SPREAD them), and every actor on node B (a resource only it offers)."""


@dataclass(frozen=True)
class ScalingWindow:
    """One layout at one actor count, measured over `seconds`."""

    layout: str
    actors: int
    env_steps_per_s: float
    """From the actors' reports (one per chunk of env steps: coarse over a short window)."""
    inserts_per_s: float
    """Transitions the shards stored per second (one per env step; smooth)."""
    updates_per_s: float
    achieved_utd: float
    nodes: int
    """Distinct Ray nodes the actors reported from."""
    held_back: int
    """Actors whose inserts were waiting on the replay's rate limiter at the window's end."""
    seconds: float
    per_node: dict[str, float]
    """Env steps/s of the actors on each node (its name in the local cluster, else as the actors
    report it: "ray-" and its Ray node id's first 12 hex digits), from each actor's own reports over
    the window (`per_node_rates`). On one machine's local cluster, the share of its throughput that
    came from each node's actors (all nodes share its cores), not a per-host capacity."""


class ScalingRunError(RuntimeError):
    """A layout's `qfleet train` ended or stalled before its measurements were done.

    Attributes:
        layout: the layout's name.
        reason: what happened.
        log: the run's log file.
    """

    def __init__(self, layout: str, reason: str, log: pathlib.Path):
        super().__init__(f"layout {layout!r}: {reason} (see {log})")
        self.layout, self.reason, self.log = layout, reason, log


def parse_layouts(texts: Sequence[str]) -> dict[str, str | None]:
    """`NAME=RESOURCES` options (RESOURCES as `actors.resources` takes it) -> {name: resources};
    none given: one layout, "config", with the config's own `actors.resources`.

    Raises:
        ConfigError: an option without NAME= or a name given twice.
    """
    if not texts:
        return {"config": None}
    layouts: dict[str, str | None] = {}
    for text in texts:
        name, sep, resources = text.partition("=")
        if not sep or not name.strip() or not resources.strip():
            raise ConfigError(f"--layout {text!r}: expected NAME=RESOURCES, e.g. spread='{{actors: 1}}'")
        if name in layouts:
            raise ConfigError(f"--layout {name!r} given twice")
        layouts[name.strip()] = resources.strip()
    return layouts


class _LiveTrain:
    """One layout's `qfleet train` subprocess and its run directory."""

    def __init__(self, layout: str, command: list[str], run_dir: pathlib.Path, log: pathlib.Path):
        from system.train.run_dir import RunDir

        self.layout, self.run, self.log_path = layout, RunDir(run_dir), log
        with open(log, "w") as handle:
            self.proc = start_child(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)

    def latest(self) -> dict:
        records = self.run.records("progress")
        return records[-1] if records else {}

    def wait(self, what: str, condition: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise ScalingRunError(self.layout, f"qfleet train exited {self.proc.returncode} {what}", self.log_path)
            if time.monotonic() > deadline:
                raise ScalingRunError(self.layout, f"timed out after {timeout:.0f} s {what}", self.log_path)
            time.sleep(0.5)

    def stop(self) -> None:
        stop_child(self.proc, timeout_s=120)


MIN_EXTENSION_S = 5.0
"""The least a window is extended by while the shards' insert counts have not moved in it."""


def _measure(
    train: _LiveTrain,
    registry,
    redis_url: str,
    run: str,
    count: int,
    seconds: float,
    warmup_s: float,
    node_names: dict[str, str],
) -> ScalingWindow:
    from actors import STATE_HELD_BACK
    from system.services.actors import scale

    scale(redis_url, run, count)
    train.wait(
        f"waiting for {count} actors to report (short of CPUs or resources? the run's log says; "
        "e.g. --set actors.num_cpus=0.25)",
        lambda: train.latest().get("actors") == count and len(registry.actors()) == count,
        timeout=ACTORS_TIMEOUT_S,
    )
    time.sleep(warmup_s)  # a measurement parameter: new actors make their envs and first chunks
    first, first_reports = train.latest(), registry.actors()
    time.sleep(seconds)
    last, last_reports = train.latest(), registry.actors()
    # The shards' insert counts reach the run's records a poll later than the actors' env steps (on
    # a loaded machine a poll can outlast a short window): the window goes on, up to its length
    # again, until they moved, and the rates are over the records' own times.
    extended = time.monotonic() + max(seconds, MIN_EXTENSION_S)
    while last["replay_inserts"] == first["replay_inserts"] and time.monotonic() < extended:
        time.sleep(0.25)
        last, last_reports = train.latest(), registry.actors()
    elapsed = max(1e-9, last["time"] - first["time"])
    reports = last_reports.values()
    inserts = last["replay_inserts"] - first["replay_inserts"]
    return ScalingWindow(
        layout=train.layout,
        actors=count,
        env_steps_per_s=round((last["env_steps"] - first["env_steps"]) / elapsed, 1),
        inserts_per_s=round(inserts / elapsed, 1),
        updates_per_s=round((last["updates"] - first["updates"]) / elapsed, 1),
        achieved_utd=round((last["updates"] - first["updates"]) / inserts, 3) if inserts else 0.0,
        nodes=len({r.get("node") for r in reports if r.get("node")}),
        held_back=sum(1 for r in reports if r.get("state") == STATE_HELD_BACK),
        seconds=round(elapsed, 1),
        per_node=per_node_rates(first_reports, last_reports, node_names),
    )


def per_node_rates(first: dict[int, dict], last: dict[int, dict], node_names: dict[str, str]) -> dict[str, float]:
    """Env steps/s per node between two readings of the actors' reports: each actor's env steps
    from its report in `first` to its report in `last` over the time between them (the reports'
    `updated_at`: the time of the report's last write, a chunk's or a held-back notice's, which
    changes no count), summed over the actors on each node.

    An actor counts only where both reports are of one process on one node: one not in `first`
    (new), or whose process or node changed in between (Ray restarted it under the same actor id:
    its count began again at 0, perhaps on another node), is left out of the window, since when its
    new process began is not known; its node is still listed. One whose report did not change (it
    made no chunk in between: held back, or stalled) counts 0. Nodes are named by `node_names` (a
    report's node -> name), else as reported; sorted by name."""
    rates: dict[str, float] = {}
    for actor_id, report in last.items():
        node = str(report.get("node") or "?")
        name = node_names.get(node, node)
        rates.setdefault(name, 0.0)
        before = first.get(actor_id)
        if before is None or _process(before) != _process(report):
            continue
        seconds = float(report.get("updated_at", 0)) - float(before.get("updated_at", 0))
        if seconds > 0:
            rates[name] += (float(report.get("env_steps", 0)) - float(before.get("env_steps", 0))) / seconds
    return {name: round(rates[name], 1) for name in sorted(rates)}


def _process(report: dict) -> tuple[str, str]:
    """(node, pid) of the process that wrote an actor's report (strings, as Redis holds them)."""
    return str(report.get("node") or "?"), str(report.get("pid", ""))


def run_layout(
    layout: str,
    resources: str | None,
    config: str,
    counts: Sequence[int],
    seconds: float,
    warmup_s: float,
    overrides: Sequence[str],
    out_dir: pathlib.Path,
    node_names: dict[str, str] | None = None,
) -> list[ScalingWindow]:
    """One layout's run: every count measured in turn, then the run stopped (SIGTERM). The layout's
    resources come after `overrides`, so they win over an `actors.resources` there."""
    from actors import ActorRegistry
    from system.local.secrets import use_run_secrets, without_redacted_password

    run_dir, log = out_dir / f"run-{layout}", out_dir / f"train-{layout}.log"
    settings = [
        "train.total_env_steps=1000000000",  # the bench stops the run
        "train.eval_every_steps=0",
        f"actors.num_actors={counts[0]}",
        *overrides,
        *([f"actors.resources={resources}"] if resources is not None else []),
    ]
    command = [sys.executable, "-m", "system.cli", "train", config, "--run-dir", str(run_dir)]
    for setting in settings:
        command += ["--set", setting]
    print(f"[scaling] layout {layout}: qfleet train {config} " + " ".join(settings[1:]), flush=True)
    train = _LiveTrain(layout, command, run_dir, log)
    registry = None
    try:
        train.wait("before learning began", lambda: train.latest().get("updates", 0) > 0, timeout=START_TIMEOUT_S)
        info = train.run.read_json("run.json") or {}
        redis_url, run = without_redacted_password(info["redis_url"]), info["run"]
        use_run_secrets(redis_url, info.get("secrets_id"))
        registry = ActorRegistry(redis_url, run)
        windows = []
        for count in counts:
            window = _measure(train, registry, redis_url, run, count, seconds, warmup_s, node_names or {})
            print(f"[scaling] {json.dumps(asdict(window))}", flush=True)
            windows.append(window)
        return windows
    finally:
        if registry is not None:
            registry.close()
        train.stop()


def table(windows: Sequence[ScalingWindow]) -> str:
    """Markdown: one row per layout and count, with the speed-up of inserts/s over the layout's first
    count and env steps/s per node."""
    lines = [
        "| layout | actors | nodes | env steps/s | inserts/s | x first | updates/s | UTD | held back | per node |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    first: dict[str, float] = {}
    for w in windows:
        base = first.setdefault(w.layout, w.inserts_per_s)
        ratio = f"{w.inserts_per_s / base:.2f}" if base else "-"
        lines.append(
            f"| {w.layout} | {w.actors} | {w.nodes} | {w.env_steps_per_s:,.0f} | {w.inserts_per_s:,.0f} | {ratio} "
            f"| {w.updates_per_s:,.1f} "
            f"| {w.achieved_utd:.3f} | {w.held_back} "
            f"| {', '.join(f'{node} {rate:,.0f}' for node, rate in w.per_node.items())} |"
        )
    return "\n".join(lines)


def run_scaling_bench(
    config: str,
    counts: Sequence[int],
    seconds: float,
    warmup_s: float,
    layouts: dict[str, str | None],
    overrides: Sequence[str],
    output: str | None,
    local_cluster: bool = False,
) -> int:
    """Every layout in turn (on a `LocalDeployment` it starts and stops, with `local_cluster`);
    prints the table (and writes JSON to `output`). 1 when a run failed."""
    windows: list[ScalingWindow] = []
    failed = False
    interrupt_on_sigterm()  # so that each run's `finally` stops its qfleet train (and the cluster)
    with contextlib.ExitStack() as stack:
        tmp = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qfleet-bench-scaling-")))
        node_names: dict[str, str] = {}
        if local_cluster:
            print("[scaling] starting the local cluster: a head, worker nodes, an external Redis", flush=True)
            deployment = stack.enter_context(LocalDeployment())
            overrides = [*deployment.train_settings(), *overrides]
            node_names = deployment.node_names()
            print(f"[scaling] cluster up at {deployment.cluster.address}: {deployment.workers}", flush=True)
        for layout, resources in layouts.items():
            try:
                windows += run_layout(layout, resources, config, counts, seconds, warmup_s, overrides, tmp, node_names)
            except ScalingRunError as exc:
                failed = True
                print(f"[scaling] {exc}; its log's last lines:", file=sys.stderr)
                print(exc.log.read_text()[-3000:], file=sys.stderr)
    print(table(windows))
    if output:
        pathlib.Path(output).write_text(json.dumps([asdict(w) for w in windows], indent=2) + "\n")
    return 1 if failed else 0
