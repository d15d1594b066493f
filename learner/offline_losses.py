"""Offline-RL losses, each a small function of tensors: IQL's expectile value regression and
V-bootstrapped Q target, AWR weights, Digi-Q's Best-of-N choice and filtered BC's selection.

Implicit Q-learning (IQL; Kostrikov, Nair & Levine 2021, "Offline Reinforcement Learning with
Implicit Q-Learning") never evaluates Q at an action the data does not hold: V(s) is regressed
towards Q(s, a_data) with an asymmetric (expectile) squared loss, so that V approaches the best
action seen in the data rather than the behaviour policy's average, and Q(s, a) towards
r + discount * V(s'). A policy is then extracted from Q and V without querying unseen actions
(AWR) or by ranking the policy's own samples by Q (Best-of-N; Bai et al. 2025, "Digi-Q").

The Q target here bootstraps from the *target* network's V (Digi-Q's variant); IQL's own code
uses the online V there. Both are sound offline (neither evaluates an unseen action); the target V
moves slowly, so with `target_update: soft` (IQL's Polyak tau = 0.005) the two differ little.

Conventions as in `learner.losses`: `reward` is the n-step return, `discount` gamma**n or 0 after
a termination; every function works on a batch [B].
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def expectile_loss(difference: torch.Tensor, expectile: float) -> torch.Tensor:
    """IQL's asymmetric squared loss L_tau(u) = |tau - 1(u < 0)| * u**2, per item.

    With u = Q(s, a) - V(s): V below Q (u > 0) costs tau, V above Q costs 1 - tau, so for tau > 0.5
    V settles at an upper expectile of Q over the data's actions. tau = 0.5 is half the squared
    error: plain regression of V towards Q (Digi-Q's V loss), with the same minimiser as MSE.

    Args:
        difference: [B] target minus prediction (Q(s, a_data) - V(s)).
        expectile: tau in (0, 1).
    """
    weight = torch.where(difference < 0, 1.0 - expectile, expectile)
    return weight * difference.square()


def conservative_penalty(q: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Discrete CQL's regulariser, per item: logsumexp_a Q(s, a) - Q(s, a_data) (Kumar et al. 2020,
    "Conservative Q-Learning for Offline Reinforcement Learning", eq. 4 with the entropy-regularised
    max over actions; the form of their discrete-action (CQL(H)) experiments).

    Minimising it pushes Q down at every action in proportion to softmax(Q) (the overrated ones most)
    and up at the data's action: actions the data rarely holds lose the arbitrary values their
    untrained embeddings give them, which Best-of-N would otherwise copy. It is >= 0, and 0 only
    in the limit where the data action's Q dominates every other by far.

    Args:
        q: [..., B, A] Q of every action (e.g. [2, B, A]: both twins).
        action: [B] the data's actions.

    Returns:
        [..., B] the penalty per item (and per twin).
    """
    index = action.long()[:, None].expand(*q.shape[:-1], 1)
    return torch.logsumexp(q, dim=-1) - q.gather(-1, index).squeeze(-1)


def value_bootstrap_target(reward: torch.Tensor, discount: torch.Tensor, next_value: torch.Tensor) -> torch.Tensor:
    """IQL's Q target: r + discount * V(s'). No max over actions, so no action outside the data
    is ever evaluated.

    Args:
        reward, discount, next_value: [B]; next_value from the (target) value network at s'.
    """
    return reward + discount * next_value


def awr_weights(advantage: torch.Tensor, temperature: float, max_weight: float) -> torch.Tensor:
    """Advantage-weighted regression's weights exp(beta * A), clipped at `max_weight` (IQL: 100).

    Computed as exp(min(beta * A, log(max_weight))): the same values, never an overflow to inf.

    Args:
        advantage: [B] Q(s, a_data) - V(s), without gradient.
        temperature: beta >= 0 (0: plain behaviour cloning).
        max_weight: the clip, > 0.
    """
    return torch.exp((temperature * advantage).clamp(max=math.log(max_weight)))


def log_likelihood(logits: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """log pi(a|s) [B] of the actions `action` [B] under softmax(`logits`) [B, A]."""
    return F.log_softmax(logits, dim=-1).gather(1, action.long()[:, None]).squeeze(1)


def sample_candidates(
    logits: torch.Tensor, n: int, data_action: torch.Tensor | None = None, *, replacement: bool = True
) -> torch.Tensor:
    """Best-of-N's candidates: n actions per state sampled from the current pi = softmax(`logits`).

    With `replacement` (the default) the n are i.i.d. draws from pi, so a peaked pi offers its
    favourite action in most slots and Best-of-N stays near pi's support. Without, they are
    distinct (the Gumbel-top-k trick: the n largest of logits + Gumbel noise; Kool et al. 2019):
    for n close to A that is nearly argmax-Q over every action, however unlikely under pi; drawn
    with replacement anyway when n > A. With `data_action`, the data action takes the first slot and
    n - 1 are sampled (Digi-Q's `actor_always_include_original_action`).

    Args:
        logits: [B, A] pi's logits (no gradient needed).
        n: candidates per state, >= 1.
        data_action: [B] the data's actions, or None.
        replacement: i.i.d. draws (True) or distinct actions (False).

    Returns:
        [B, n] action indices.
    """
    sampled = n - 1 if data_action is not None else n
    actions = logits.shape[1]
    if sampled == 0:
        candidates = logits.new_zeros((logits.shape[0], 0), dtype=torch.long)
    elif not replacement and sampled <= actions:
        gumbel = -torch.empty_like(logits).exponential_().log()
        candidates = (logits + gumbel).topk(sampled, dim=1).indices
    else:
        candidates = torch.multinomial(logits.softmax(dim=1), sampled, replacement=True)
    if data_action is not None:
        candidates = torch.cat([data_action.long()[:, None], candidates], dim=1)
    return candidates


def best_of_n(
    candidates: torch.Tensor, q: torch.Tensor, value: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Digi-Q's Best-of-N choice: of N candidate actions per state, the one with the highest Q, and
    whether its advantage Q - V exceeds `threshold` (only then is it imitated).

    Args:
        candidates: [B, N] action indices (sampled from the current policy).
        q: [B, A] action values.
        value: [B] state values V(s).
        threshold: the advantage the chosen action must exceed.

    Returns:
        (chosen [B] action indices, improves [B] bool).
    """
    return best_candidate(candidates, q.gather(1, candidates), value, threshold)


def best_candidate(
    candidates: torch.Tensor, candidate_q: torch.Tensor, value: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`best_of_n` given Q at the candidates only (`candidate_q` [B, N]), as a critic that scores
    just the actions asked for (Q(s, a) with an action embedding) gives it.

    Returns:
        (chosen [B] action indices, improves [B] bool).
    """
    best = candidate_q.argmax(dim=1, keepdim=True)
    chosen = candidates.gather(1, best).squeeze(1)
    improves = candidate_q.gather(1, best).squeeze(1) - value > threshold
    return chosen, improves


def top_returns(episode_return: torch.Tensor, top_k_percent: float) -> torch.Tensor:
    """Filtered BC's selection: the items whose episode return is among the top k% of the batch.

    keep = ceil(k% of B) (at least 1) items by return; every item whose return equals the lowest
    kept one is kept too, so ties are never split by position. When that lowest kept return is the
    batch's minimum while the batch holds higher ones (0/1 returns with fewer successes than
    k% of B), only the items above the minimum are kept: the ties would otherwise keep the whole
    batch, failures included. A batch whose returns are all equal, or k = 100, keeps every item
    (plain BC).

    Args:
        episode_return: [B] the return of the episode each transition belongs to.
        top_k_percent: k in (0, 100].

    Returns:
        [B] bool.
    """
    keep = max(1, math.ceil(top_k_percent * episode_return.numel() / 100.0 - 1e-9))  # 1e-9: no float ceil-up
    lowest_kept = episode_return.topk(keep).values[-1]
    kept = episode_return >= lowest_kept
    above = episode_return > lowest_kept
    if int(kept.sum()) > keep and lowest_kept == episode_return.min() and bool(above.any()):
        return above  # the ties at the minimum would have kept the whole batch
    return kept
