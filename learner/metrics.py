"""Prometheus metrics of the learner (`qfleet_learner_*`), in the learner's own registry."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge

PREFIX = "qfleet_learner"

SERIES = {
    f"{PREFIX}_updates_total": "Gradient updates done (continues across resumes).",
    f"{PREFIX}_updates_per_second": "Updates per second over the last progress interval.",
    f"{PREFIX}_loss": "Loss of the latest update.",
    f"{PREFIX}_q_mean": "Mean Q of the taken actions in the latest batch.",
    f"{PREFIX}_td_error": "Mean |TD error| of the latest batch.",
    f"{PREFIX}_grad_norm": "Global gradient norm of the latest update (before clipping).",
    f"{PREFIX}_policy_loss": "Policy pi's loss of the latest update (offline losses iql, filtered_bc only).",
    f"{PREFIX}_imitation_weight": "Mean per-item weight of pi's imitation loss in the latest update: the share "
    "imitated (Best-of-N) or kept (filtered_bc), AWR's mean clipped weight (iql, filtered_bc only).",
    f"{PREFIX}_clamped_target_fraction": "Share of the latest batch's targets outside the value support, "
    "clamped onto it (c51, hl_gauss only; above 0.01 the learner warns).",
    f"{PREFIX}_achieved_utd": "Updates per transition inserted into replay (all shards), since the run began.",
    f"{PREFIX}_target_utd": "Configured updates per env step.",
    f"{PREFIX}_weight_version": "Version of the newest published weights.",
    f"{PREFIX}_learning_rate": "Adam's learning rate for the next update (learner.lr_schedule; after a resume, "
    "the configured one).",
    f"{PREFIX}_policy_staleness": "Learner weight version minus the version that produced the sampled transitions (batch mean).",
    f"{PREFIX}_sample_age_seconds": "Seconds since the weights that produced the sampled transitions were published (batch mean).",
    f"{PREFIX}_data_wait_seconds_total": "Seconds the learner waited for data (replay empty or UTD budget spent).",
    f"{PREFIX}_resets_total": "Periodic resets done.",
}


class LearnerMetrics:
    """The learner's series; `registry` is served on the learner's /metrics.

    The policy series (`policy_loss`, `imitation_weight`) and `clamped_target_fraction` read NaN
    until set: a loss without a policy to imitate (the Q losses, SAC) or without a value support shows "no value" in Grafana rather than a 0 that reads as
    a value, while every dashboard query still finds its series.
    """

    def __init__(self, run: str, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()

        self.run = run

        def gauge(name: str) -> Gauge:
            return Gauge(name, SERIES[name], ["run"], registry=self.registry).labels(run)

        def counter(name: str) -> Counter:
            return Counter(name.removesuffix("_total"), SERIES[name], ["run"], registry=self.registry).labels(run)

        self.updates = counter(f"{PREFIX}_updates_total")
        self.updates_per_second = gauge(f"{PREFIX}_updates_per_second")
        self.loss = gauge(f"{PREFIX}_loss")
        self.q_mean = gauge(f"{PREFIX}_q_mean")
        self.td_error = gauge(f"{PREFIX}_td_error")
        self.grad_norm = gauge(f"{PREFIX}_grad_norm")
        self.policy_loss = gauge(f"{PREFIX}_policy_loss")
        self.imitation_weight = gauge(f"{PREFIX}_imitation_weight")
        self.clamped_target_fraction = gauge(f"{PREFIX}_clamped_target_fraction")
        self.policy_loss.set(math.nan)
        self.imitation_weight.set(math.nan)
        self.clamped_target_fraction.set(math.nan)
        self.achieved_utd = gauge(f"{PREFIX}_achieved_utd")
        self.target_utd = gauge(f"{PREFIX}_target_utd")
        self.weight_version = gauge(f"{PREFIX}_weight_version")
        self.learning_rate = gauge(f"{PREFIX}_learning_rate")
        self.policy_staleness = gauge(f"{PREFIX}_policy_staleness")
        self.sample_age = gauge(f"{PREFIX}_sample_age_seconds")
        self.data_wait = counter(f"{PREFIX}_data_wait_seconds_total")
        self.resets = counter(f"{PREFIX}_resets_total")

    def set_policy(self, policy_loss: float | None, imitation_weight: float | None) -> None:
        """Sets the policy series from an update's figures; None leaves a series as it is (NaN)."""
        if policy_loss is not None:
            self.policy_loss.set(policy_loss)
        if imitation_weight is not None:
            self.imitation_weight.set(imitation_weight)
