"""The Grafana dashboard, generated from the packages' metric-name modules with Grafana's own typed
builders (grafana-foundation-sdk), so the JSON is the schema the shipped Grafana expects.

Queries name their series through `series`, which fails on a name no metrics module defines.

    python -m system.observe.dashboard          # rewrites deploy/grafana/dashboards/qfleet.json
    python -m system.observe.dashboard --check  # exit 1 when the committed file is not current
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from dataclasses import dataclass
from typing import TypeVar

from grafana_foundation_sdk.builders import common as grafana_common
from grafana_foundation_sdk.builders import dashboard as grafana
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as grafana_common_model
from grafana_foundation_sdk.models import dashboard as grafana_model

from actors import METRIC_SERIES as ACTOR_SERIES
from learner import METRIC_SERIES as LEARNER_SERIES
from replay import METRIC_SERIES as REPLAY_SERIES
from system.train.metrics import SERIES as TRAIN_SERIES

OUTPUT = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "qfleet.json"
"""The committed dashboard (provisioned into Grafana by docker-compose)."""

UID = "qfleet"
DATASOURCE = grafana_model.DataSourceRef(type_val="prometheus", uid="${datasource}")
"""Every panel and query reads the data source picked in the dashboard's `datasource` variable."""
RUN = 'run=~"$run"'
RATE = "$__rate_interval"
PANEL_HEIGHT, PANEL_WIDTH = 8, 8
"""Grid units: three panels side by side on Grafana's 24-column grid."""

ALL_SERIES = LEARNER_SERIES | REPLAY_SERIES | ACTOR_SERIES | TRAIN_SERIES

OFF_PANEL = frozenset({"qfleet_learner_learning_rate"})
"""Exported series no panel shows, on purpose: the learning rate follows the config (constant, or a
known linear decay), so it is read on /metrics or in Prometheus when checking a schedule, not
watched."""


def series(name: str) -> str:
    """`name`, checked against the metric modules (KeyError: a series nobody exports); a histogram's
    `_bucket` series counts as its base name."""
    if name.removesuffix("_bucket") not in ALL_SERIES:
        raise KeyError(f"{name}: not defined in any metrics module")
    return name


@dataclass(frozen=True)
class Panel:
    """A time-series panel: `queries` are (PromQL, legend) pairs; `unit` a Grafana unit id."""

    title: str
    unit: str
    queries: tuple[tuple[str, str], ...]
    description: str = ""

    def help(self) -> str:
        """The description, or else the help text of the series the first query reads."""
        if self.description:
            return self.description
        first = self.queries[0][0]
        names = [name for name in ALL_SERIES if name in first]
        return ALL_SERIES[max(names, key=len)]

    def builder(self) -> timeseries.Panel:
        """Grafana's time-series panel: thin lines, no points, a bottom legend, one tooltip for all series."""
        panel = _with_queries(timeseries.Panel(), self)
        panel.draw_style(grafana_common_model.GraphDrawStyle.LINE).line_width(1).fill_opacity(10)
        panel.show_points(grafana_common_model.VisibilityMode.NEVER)
        legend = grafana_common.VizLegendOptions().show_legend(True)
        legend.display_mode(grafana_common_model.LegendDisplayMode.LIST)
        legend.placement(grafana_common_model.LegendPlacement.BOTTOM)
        tooltip = grafana_common.VizTooltipOptions().mode(grafana_common_model.TooltipDisplayMode.MULTI)
        tooltip.sort(grafana_common_model.SortOrder.DESCENDING)
        return panel.legend(legend).tooltip(tooltip)


@dataclass(frozen=True)
class Stat(Panel):
    """A single-figure panel: each series' latest value over a sparkline of its history, coloured by
    `thresholds`, (value, colour) steps over a green base (none: the figure stays green). For counts
    whose current value is the point, such as transitions lost."""

    thresholds: tuple[tuple[float, str], ...] = ()

    def builder(self) -> stat.Panel:
        steps = [grafana_model.Threshold(value=None, color="green")]  # the base step: from -infinity
        steps += [grafana_model.Threshold(value=value, color=color) for value, color in self.thresholds]
        thresholds = grafana.ThresholdsConfig().mode(grafana_model.ThresholdsMode.ABSOLUTE).steps(steps)
        panel = _with_queries(stat.Panel(), self).thresholds(thresholds)
        panel.reduce_options(grafana_common.ReduceDataOptions().values(False).calcs(["lastNotNull"]))
        panel.graph_mode(grafana_common_model.BigValueGraphMode.AREA)
        panel.color_mode(grafana_common_model.BigValueColorMode.VALUE)
        return panel.text_mode(grafana_common_model.BigValueTextMode.VALUE_AND_NAME)


PanelBuilder = TypeVar("PanelBuilder", timeseries.Panel, stat.Panel)


def _with_queries(builder: PanelBuilder, panel: Panel) -> PanelBuilder:
    """`builder` with what every panel has: title, description, unit, size and its Prometheus queries
    (refIds A, B, ... in order), all on the dashboard's data source."""
    builder.title(panel.title).description(panel.help()).unit(panel.unit).datasource(DATASOURCE)
    builder.height(PANEL_HEIGHT).span(PANEL_WIDTH)
    for index, (expr, legend) in enumerate(panel.queries):
        query = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + index))
        builder.with_target(query.datasource(DATASOURCE))
    return builder


def _select(name: str, extra: str = "") -> str:
    """`name{run=~"$run"[,extra]}`."""
    return f"{series(name)}{{{RUN}{',' + extra if extra else ''}}}"


def _rate(name: str, by: str) -> str:
    return f"sum by ({by}) (rate({_select(name)}[{RATE}]))"


def _quantile(quantile: float, name: str, by: str) -> str:
    """The `quantile` of histogram series `name` (a _bucket series) by label `by`, over all shards."""
    return f"histogram_quantile({quantile}, sum by (le, {by}) (rate({_select(name)}[{RATE}])))"


def _gauge(title: str, unit: str, name: str, legend: str = "{{run}}", **kw) -> Panel:
    return Panel(title, unit, ((_select(name), legend),), **kw)


def _learner() -> list[Panel]:
    prefix = "qfleet_learner"
    return [
        Panel(
            "Updates per second",
            "ops",
            (
                (_select(f"{prefix}_updates_per_second"), "{{run}} (learner's window)"),
                (
                    f"sum by (run) (rate({_select(f'{prefix}_updates_total')}[{RATE}]))",
                    "{{run}} (rate of updates_total)",
                ),
            ),
            "Gradient updates per second: the learner's own figure over its progress interval, and the rate "
            "of qfleet_learner_updates_total.",
        ),
        _gauge("Loss", "none", f"{prefix}_loss"),
        _gauge("Q mean", "none", f"{prefix}_q_mean"),
        _gauge("TD error", "none", f"{prefix}_td_error"),
        _gauge("Gradient norm", "none", f"{prefix}_grad_norm"),
        _gauge(
            "Policy loss",
            "none",
            f"{prefix}_policy_loss",
            description="The policy pi's imitation loss of the latest update (offline losses iql and filtered_bc; "
            "absent for the Q losses and sac). The critics' loss is on Loss.",
        ),
        _gauge(
            "Imitation weight",
            "none",
            f"{prefix}_imitation_weight",
            description="Mean per-item weight of pi's imitation loss: the share of the batch imitated (Best-of-N) "
            "or kept (filtered_bc), in [0, 1]; AWR's mean clipped exp(beta * advantage). Near 0 for Best-of-N: "
            "the critic finds nothing better than V among pi's samples.",
        ),
        _gauge(
            "Clamped targets",
            "percentunit",
            f"{prefix}_clamped_target_fraction",
            description="Share of the latest batch's targets outside the value support [learner.v_min, "
            "learner.v_max], clamped onto it (c51, hl_gauss; absent otherwise). Above 1% the support cannot hold "
            "the returns: set learner.v_min/v_max to auto.",
        ),
        Panel(
            "Update-to-data ratio: achieved vs target",
            "none",
            (
                (_select(f"{prefix}_achieved_utd"), "{{run}} achieved"),
                (_select(f"{prefix}_target_utd"), "{{run}} target"),
            ),
            "Updates per transition inserted into replay since the run began (achieved), against the configured "
            "updates per env step (target). Achieved below target: the learner is the bottleneck.",
        ),
        Panel(
            "Samples per insert (learner's replay client)",
            "none",
            (
                (_select("qfleet_replay_achieved_samples_per_insert"), "{{run}} achieved"),
                (_select("qfleet_replay_target_samples_per_insert"), "{{run}} target"),
            ),
            "Total samples / total inserts over all shards as the learner's client last saw them, and the ratio it "
            "enforces (0: none).",
        ),
        _gauge("Weight version", "none", f"{prefix}_weight_version"),
        _gauge("Policy staleness", "none", f"{prefix}_policy_staleness"),
        _gauge("Sample age", "s", f"{prefix}_sample_age_seconds"),
        Panel(
            "Time waiting for data",
            "percentunit",
            ((f"sum by (run) (rate({_select(f'{prefix}_data_wait_seconds_total')}[{RATE}]))", "{{run}}"),),
            "Fraction of wall time the learner waited for data (replay below learning_starts, or the UTD budget "
            "spent: actors are the bottleneck).",
        ),
        Panel(
            "Updates and resets",
            "short",
            (
                (_select(f"{prefix}_updates_total"), "{{run}} updates"),
                (_select(f"{prefix}_resets_total"), "{{run}} resets"),
            ),
            "Gradient updates done and periodic resets done, since the run began (continue across resumes).",
        ),
    ]


def _replay() -> list[Panel]:
    prefix = "qfleet_replay"
    return [
        Panel(
            "Size per shard",
            "short",
            (
                (_select(f"{prefix}_size"), "shard {{shard}}"),
                (_select(f"{prefix}_capacity"), "shard {{shard}} capacity"),
            ),
            "Items held by each shard, and its capacity.",
        ),
        Panel("Inserts per second", "ops", ((_rate(f"{prefix}_inserts_total", "run, shard"), "shard {{shard}}"),)),
        Panel("Samples per second", "ops", ((_rate(f"{prefix}_samples_total", "run, shard"), "shard {{shard}}"),)),
        Panel(
            "Rate limiter: time blocked",
            "percentunit",
            ((_rate(f"{prefix}_limiter_wait_seconds_total", "run, shard, op"), "shard {{shard}} {{op}}"),),
            "Seconds per second that callers spent blocked by each shard's rate limiter, by operation (insert: "
            "actors ahead of the UTD; sample: the learner ahead).",
        ),
        Panel(
            "Rate limiter: calls blocked now",
            "short",
            ((_select(f"{prefix}_limiter_waiting"), "shard {{shard}} {{op}}"),),
        ),
        _gauge("Rate limiter: error term", "short", f"{prefix}_limiter_diff", "shard {{shard}}"),
        Panel(
            "RPC latency (server side)",
            "s",
            (
                (_quantile(0.5, f"{prefix}_rpc_latency_seconds_bucket", "method"), "p50 {{method}}"),
                (_quantile(0.99, f"{prefix}_rpc_latency_seconds_bucket", "method"), "p99 {{method}}"),
            ),
            "Median and 99th percentile of the shards' server-side RPC latency (per Insert batch, per "
            "Sample/UpdatePriorities call), all shards together.",
        ),
        Panel(
            "Dropped priority updates per second",
            "ops",
            ((_rate(f"{prefix}_dropped_priority_updates_total", "run, shard"), "shard {{shard}}"),),
        ),
        Panel(
            "Rejected batches, refused calls and checkpoints",
            "short",
            (
                (f"sum by (run, shard) ({_select(f'{prefix}_rejected_batches_total')})", "shard {{shard}} rejected"),
                (
                    f"sum by (run, shard) ({_select(f'{prefix}_unauthenticated_requests_total')})",
                    "shard {{shard}} unauthenticated",
                ),
                (f"sum by (run, shard) ({_select(f'{prefix}_checkpoints_total')})", "shard {{shard}} checkpoints"),
            ),
            "Batches a shard rejected for bad input (malformed column, non-finite priority), calls it refused "
            "for a missing or wrong replay token, and checkpoints written, since the shard started.",
        ),
        _gauge("Priority mass", "none", f"{prefix}_priority_mass", "shard {{shard}}"),
        Panel(
            "Learner's view of the shards",
            "short",
            (
                (_select(f"{prefix}_live_shards"), "{{run}} live shards"),
                (_select(f"{prefix}_failovers_total"), "{{run}} failovers"),
            ),
            "Shards the learner's client takes as live, and how often it found one unavailable and moved on.",
        ),
        Panel(
            "Inserts and samples (all shards)",
            "short",
            (
                (_select(f"{prefix}_global_inserts"), "{{run}} inserts"),
                (_select(f"{prefix}_global_samples"), "{{run}} samples"),
            ),
            "Sum of the shards' insert and sample counters, as the learner's client last saw them.",
        ),
    ]


def _actors() -> list[Panel]:
    prefix = "qfleet_actor"
    return [
        Panel(
            "Env steps per second",
            "ops",
            (
                (_rate(f"{prefix}_env_steps_total", "run, actor"), "actor {{actor}}"),
                (_rate(f"{prefix}_env_steps_total", "run"), "{{run}} total"),
                (_rate(f"{prefix}_random_steps_total", "run"), "{{run}} random, before the policy"),
            ),
            "Environment steps per second of each actor (every env of its vector) and of all actors; "
            "of those, the uniform random steps a fresh run's actors take while building their policy.",
        ),
        _gauge("Episode return", "none", f"{prefix}_episode_return", "actor {{actor}}"),
        _gauge("Episode length", "short", f"{prefix}_episode_length", "actor {{actor}}"),
        Panel(
            "Weight version lag",
            "none",
            (
                (
                    f"max by (run) ({_select('qfleet_learner_weight_version')}) - on (run) group_right "
                    f"{_select(f'{prefix}_weight_version')}",
                    "actor {{actor}}",
                ),
            ),
            "Published learner weight version minus the version each actor acts with. It grows when actors "
            "cannot keep up with the weight broadcast.",
        ),
        Panel(
            "Env restarts (last 10 min)",
            "short",
            ((f"sum by (run, actor) (increase({_select(f'{prefix}_env_restarts_total')}[10m]))", "actor {{actor}}"),),
            "Environments rebuilt after raising in step or reset, per actor, over the last 10 minutes.",
        ),
        Panel(
            "Transitions per second",
            "ops",
            (
                (_rate(f"{prefix}_transitions_inserted_total", "run"), "{{run}} inserted"),
                (_rate(f"{prefix}_transitions_lost_total", "run"), "{{run}} lost"),
            ),
            "n-step transitions acknowledged by replay, and transitions no shard accepted within insert_retry_s "
            "(dropped and counted), all actors.",
        ),
        Panel(
            "Time blocked inserting",
            "percentunit",
            ((_rate(f"{prefix}_insert_wait_seconds_total", "run, actor"), "actor {{actor}}"),),
            "Fraction of wall time each actor spent blocked inserting (replay back-pressure or failover).",
        ),
        Panel(
            "Episodes and weight pulls per second",
            "ops",
            (
                (_rate(f"{prefix}_episodes_total", "run"), "{{run}} episodes"),
                (_rate(f"{prefix}_weight_pulls_total", "run"), "{{run}} weight pulls"),
            ),
            "Episodes finished and new weight versions fetched per second, all actors.",
        ),
        _gauge("Exploration (epsilon)", "percentunit", f"{prefix}_epsilon", "actor {{actor}}"),
    ]


def _run() -> list[Panel]:
    prefix = "qfleet_train"
    return [
        Panel(
            "Env steps",
            "short",
            (
                (_select(f"{prefix}_env_steps"), "{{run}}"),
                (_select(f"{prefix}_target_env_steps"), "{{run}} target"),
            ),
            "Env steps of the run over all actors, and train.total_env_steps where it stops.",
        ),
        Panel(
            "Return",
            "none",
            (
                (_select(f"{prefix}_eval_return"), "{{run}} evaluation"),
                (_select(f"{prefix}_recent_return"), "{{run}} training (last 100 episodes)"),
            ),
            "Mean return of the latest evaluation of the published weights (greedy, or as the actors act with "
            "train.eval_acting: policy; train.eval_epsilon on top), and of the last 100 training episodes (with "
            "exploration).",
        ),
        Stat("Env steps at the latest evaluation", "short", ((_select(f"{prefix}_eval_env_steps"), "{{run}}"),)),
        Stat("Episodes", "short", ((_select(f"{prefix}_episodes"), "{{run}}"),)),
        _gauge("Replay size (all shards)", "short", f"{prefix}_replay_size"),
        Panel(
            "Actors",
            "short",
            (
                (_select(f"{prefix}_actors"), "{{run}} desired"),
                (f"count by (run) ({_select('qfleet_actor_env_steps_total')})", "{{run}} reporting"),
            ),
            "Env actors the supervisor keeps running (qfleet scale changes it), and actors Prometheus scrapes.",
        ),
        Stat(
            "Faults ridden out",
            "short",
            ((_select(f"{prefix}_faults"), "{{run}} {{kind}}"),),
            "Components that died or hung and came back (Ray restarted them, or the driver did), by kind, over the "
            "run. The run stops only when one component fails train.max_component_failures times within "
            "train.failure_window_s.",
            thresholds=((1, "orange"),),
        ),
        Stat(
            "Transitions lost",
            "short",
            ((_select(f"{prefix}_transitions_lost"), "{{run}}"),),
            thresholds=((1, "red"),),
        ),
        Panel(
            "Transitions accounted",
            "short",
            (
                (_select(f"{prefix}_transitions_inserted"), "{{run}} stored for the actors"),
                (_select(f"{prefix}_transitions_stored_twice"), "{{run}} stored twice"),
                (_select(f"{prefix}_transitions_given_back"), "{{run}} given back"),
                (_select(f"{prefix}_transitions_lost"), "{{run}} lost"),
            ),
            "What the shards stored for the actors (each transition once, counted by the shards, so a killed "
            "actor's last chunk is in), what a failover stored on two shards, what a shard stored of batches "
            "handed back to an actor, and what was lost: stored for the actors = held by the shards + lost by "
            "shards - stored twice - given back. No series without shard ledgers (train.checkpoint_replay off).",
        ),
        Panel(
            "Accounting gaps",
            "short",
            (
                (_select(f"{prefix}_transitions_unattributed"), "{{run}} unattributed"),
                (_select(f"{prefix}_transitions_untracked"), "{{run}} untracked streams"),
                (_select(f"{prefix}_receipts_unresolved"), "{{run}} receipts unresolved"),
                (_select(f"{prefix}_receipts_dropped"), "{{run}} receipts dropped"),
            ),
            "Where the exact accounting falls short, all 0 when it holds: transitions no actor is credited with, "
            "transitions of streams beyond the shards' ledger slots, failover receipts naming a stream no ledger "
            "holds, and receipts the shards refused.",
        ),
    ]


ROWS = (("Run", _run), ("Learner", _learner), ("Replay", _replay), ("Actors", _actors))


def rows() -> list[tuple[str, list[Panel]]]:
    return [(title, build()) for title, build in ROWS]


def dashboard() -> grafana_model.Dashboard:
    """The dashboard as Grafana's typed model: a row per part, its panels three to a line below it
    (the builder places them on the grid), ids in order."""
    board = grafana.Dashboard("qfleet").uid(UID).tags(["qfleet"]).readonly()
    board.description(
        "qfleet learner, replay and actors (generated by system/observe/dashboard.py; do not edit by hand)."
    )
    board.timezone("browser").refresh("10s").time("now-30m", "now")
    board.with_variable(grafana.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    runs = grafana.QueryVariable("run").label("Run").datasource(DATASOURCE)
    runs.query('label_values(up{job=~"qfleet_.+"}, run)').refresh(grafana_model.VariableRefresh.ON_TIME_RANGE_CHANGED)
    runs.multi(True).include_all(True).current(grafana_model.VariableOption(text="All", value="$__all"))
    board.with_variable(runs.sort(grafana_model.VariableSort.ALPHABETICAL_ASC))
    panel_id = 0
    for title, panels in rows():
        panel_id += 1
        board.with_row(grafana.Row(title).id(panel_id))
        for panel in panels:
            panel_id += 1
            board.with_panel(panel.builder().id(panel_id))
    return board.build()


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query on the dashboard, read from the built model, for tests that
    run them through a real Prometheus. They use the dashboard variables `$run` (one or more runs) and
    `$__rate_interval`."""
    return [
        (panel.title, target.expr)
        for panel in dashboard().panels
        if isinstance(panel, grafana_model.Panel)
        for target in panel.targets
    ]


def render() -> str:
    """The dashboard as the JSON Grafana provisions (the SDK's encoder, 2-space indents)."""
    return json.dumps(dashboard(), cls=JSONEncoder, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m system.observe.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=pathlib.Path, default=OUTPUT, help=f"where to write (default {OUTPUT})")
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs from what would be written")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is not current: run python -m system.observe.dashboard", file=sys.stderr)
            return 1
        print(f"{args.output} is current")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output} ({sum(len(p) for _, p in rows())} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
