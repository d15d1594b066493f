"""Offline learners for discrete actions: `IQLAgent` ("iql") and `FilteredBCAgent` ("filtered_bc"),
both implementing `learner.agent.Agent`. The maths is in `learner.offline_losses`.

Both train a policy network pi (its [B, A] outputs are logits: a Q-shaped network, or the factored
UI policy's log-probabilities with `learner.policy_head: factored`; learner/action_heads.py) and
publish it:
actors and evaluation act greedily in pi (argmax of its logits), epsilon-greedy while exploring,
through `learner.acting.PolicyLogits` (actors draw from pi with `learner.policy_acting: sample`;
evaluation stays greedy unless `train.eval_acting: policy`). Continuous actions are not supported (IQL's Gaussian policy
is not built).

Batch columns: the usual `obs`, `action`, `reward`, `next_obs`, `discount`; "filtered_bc" also
needs `episode_return` [B] float32: the undiscounted return of the whole episode each transition
belongs to (datasets provide it; online transitions from actors do not).

Priorities sent back: "iql" the |TD error| of its Q (the twins' mean against
r + discount * V_target(s')), as the Q losses do; "filtered_bc" has no TD error (`td_abs` None):
no priorities are sent, and items keep the priority they were inserted with.
"""

from __future__ import annotations

import copy
import logging
from typing import ClassVar

import torch

from learner import offline_losses
from learner.action_heads import build_iql_critic, build_policy_network
from learner.agent import UpdateResult
from learner.config import LearnerConfig
from learner.errors import MalformedColumnError, MissingColumnError
from learner.lr_schedule import set_learning_rate
from learner.optimization import periodic_reset, reinitialise_with_optimizer, step, update_target
from learner.spaces import ActionSpace

log = logging.getLogger(__name__)


def _column(batch: dict[str, torch.Tensor], column: str, loss: str) -> torch.Tensor:
    if column not in batch:
        raise MissingColumnError(loss, column, sorted(batch))
    return batch[column]


def _episode_return(batch: dict[str, torch.Tensor], loss: str) -> torch.Tensor:
    """The batch's `episode_return` [B] as float, refused when missing or not finite (a NaN would
    rank as no return at all, an inf keep only its own episode)."""
    episode_return = _column(batch, "episode_return", loss).float()
    if not torch.isfinite(episode_return).all():
        raise MalformedColumnError(loss, "episode_return", "holds NaN or infinite returns")
    return episode_return


def _kept_weight(kept: torch.Tensor) -> torch.Tensor:
    """Per-item weights [B] that make a mean over the batch the mean over the kept items only
    (kept * B / kept.sum()), as `FilteredBCAgent`'s loss averages; zeros when none is kept."""
    count = kept.sum()
    return kept * (kept.numel() / count) if count > 0 else kept


class _PolicyAgent:
    """The policy network pi, its optimizer and the Agent plumbing both offline agents share."""

    discrete: ClassVar[bool] = True

    def __init__(self, config: LearnerConfig, obs_shape: tuple[int, ...], space: ActionSpace, device: torch.device):
        self.config, self.device = config, device
        self.policy = build_policy_network(obs_shape, space, config.architecture).to(device)
        self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.optimizer.lr)

    def _imitate(
        self, logits: torch.Tensor, action: torch.Tensor, item_weight: torch.Tensor, weights: torch.Tensor
    ) -> float:
        """One step of pi on -mean(weights * item_weight * log pi(action|s)); returns that loss.

        No step when every item's weight is zero (Best-of-N found nothing better than V anywhere in
        the batch): the loss has no gradient then, and an Adam step would still move pi by its
        momentum."""
        weight = weights * item_weight
        if not bool((weight != 0).any()):
            return 0.0
        log_likelihood = offline_losses.log_likelihood(logits, action)
        loss = -(weight * log_likelihood).mean()
        step(self.policy_optimizer, loss, list(self.policy.parameters()), self.config.optimizer.max_grad_norm)
        return float(loss.detach())

    def policy_state(self) -> dict[str, torch.Tensor]:
        """The policy network's weights (on CPU): what actors act with."""
        return {k: v.detach().cpu() for k, v in self.policy.state_dict().items()}


class IQLAgent(_PolicyAgent):
    """Implicit Q-learning (Kostrikov et al. 2021) with discrete actions.

    Per update: V(s) <- expectile regression towards min(Q1, Q2)_target(s, a_data); Q1, Q2 (s, a_data)
    <- r + discount * V_target(s') (squared error; the target V as Digi-Q does, where IQL's code
    uses the online V); then pi by the configured extraction:

    - "awr": maximise exp(beta * (Q_target(s, a_data) - V(s))) (clipped) * log pi(a_data|s).
    - "best_of_n" (Digi-Q, Bai et al. 2025): sample n candidates from the current pi (i.i.d., or
      distinct with `best_of_n_replacement: false`; the data action in one slot with
      `include_data_action`), take the one with the
      highest Q_target; if its advantage over V(s) exceeds the threshold, maximise its
      log-likelihood, else that item gives no gradient. Digi-Q's operator is this indicator:
      imitating the data action instead would pull pi back towards the behaviour policy exactly
      where the critic found nothing better among pi's own samples.

    The twin Qs are discrete heads or, with `learner.critic: action_embedding`, Digi-Q's Q(s, a) with
    the action as an input (learner/action_heads.py); the update asks either only for Q at the data
    action and Best-of-N's N candidates (`twin_q_at`), never for all A actions.
    With `iql.cql_alpha` > 0 each twin's loss also has discrete CQL's penalty (Kumar et al. 2020),
    alpha * (logsumexp_a Q(s, a) - Q(s, a_data)), from Q of every action in one pass (`twin_q`):
    it lowers the Qs at actions the data rarely holds, which Best-of-N would otherwise copy.
    One target network holds the twin Qs and V (`learner.target_update` as for the other losses;
    "none": the online critics bootstrap). With `iql.policy_starts`, pi is not updated in the first
    that many updates: the critics train first, while pi learns nothing (`imitation_weight` 0) or,
    with `iql.policy_warmup: filtered_bc`, clones the data actions of the batch's top
    `top_k_percent` transitions by episode return, with `FilteredBCAgent`'s selection and loss (the
    mean over the kept items), so that Best-of-N starts from a trained proposal policy as Digi-Q's
    does; Best-of-N's candidates are neither sampled nor scored then. A warm-up batch without
    `episode_return` (a learner restarted from no checkpoint in an online phase, whose batches hold
    actors' transitions) is not refused: pi learns nothing on it, as with `policy_warmup: none`,
    and a warning says so once. The critics and pi have their own optimizers; `loss` and
    `grad_norm` of an update are the critics' (Q + V), as for SAC; `policy_loss` and
    `imitation_weight` are pi's.
    """

    def __init__(self, config: LearnerConfig, obs_shape: tuple[int, ...], space: ActionSpace, device: torch.device):
        super().__init__(config, obs_shape, space, device)
        self.critic = build_iql_critic(obs_shape, space, config.architecture).to(device)
        self.critic_target = copy.deepcopy(self.critic) if config.target.update != "none" else None
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.optimizer.lr)
        self.updates = 0
        """Updates made (checkpointed): pi waits for `iql.policy_starts` of them."""
        self._warned_no_returns = False

    def update(self, batch: dict[str, torch.Tensor], weights: torch.Tensor) -> UpdateResult:
        iql = self.config.iql
        self.updates += 1
        obs, action = batch["obs"], batch["action"].long()
        reward, discount = batch["reward"].float(), batch["discount"].float()
        bootstrap = self.critic_target if self.critic_target is not None else self.critic
        logits = self.policy(obs)
        warming_up = (
            self.updates <= iql.policy_starts
        )  # the critics first: pi would imitate an untrained critic's picks
        with torch.no_grad():
            # Q_target where it is needed, in one pass: the data action, then Best-of-N's candidates.
            asked = action[:, None]
            if iql.extraction == "best_of_n" and not warming_up:
                data_action = action if iql.include_data_action else None
                candidates = offline_losses.sample_candidates(
                    logits.detach(), iql.n, data_action, replacement=iql.replacement
                )
                asked = torch.cat([asked, candidates], 1)
            q_target_asked = bootstrap.twin_q_at(obs, asked).min(dim=0).values  # [B, 1 (+ N)]
            q_target_taken = q_target_asked[:, 0]
            td_target = offline_losses.value_bootstrap_target(reward, discount, bootstrap.v(batch["next_obs"]))
        value = self.critic.v(obs)
        if iql.cql_alpha > 0:  # Q of every action, in one pass: the penalty needs them all
            q_every = self.critic.twin_q(obs)  # [2, B, A]
            q_taken = q_every.gather(2, action[None, :, None].expand(2, -1, 1)).squeeze(2)
            q_per_item = (q_taken - td_target).square().mean(dim=0)
            q_per_item = q_per_item + iql.cql_alpha * offline_losses.conservative_penalty(q_every, action).mean(dim=0)
        else:
            q_taken = self.critic.twin_q_at(obs, action)  # [2, B]
            q_per_item = (q_taken - td_target).square().mean(dim=0)
        v_per_item = offline_losses.expectile_loss(q_target_taken - value, iql.expectile)
        critic_loss = (weights * (q_per_item + v_per_item)).mean()
        max_grad_norm = self.config.optimizer.max_grad_norm
        grad_norm = step(self.critic_optimizer, critic_loss, list(self.critic.parameters()), max_grad_norm)

        advantage = q_target_taken - value.detach()
        if warming_up:
            imitated, kept = action, self._warmup_kept(batch, advantage)
            item_weight, imitation_weight = _kept_weight(kept), float(kept.mean())
        elif iql.extraction == "awr":
            imitated = action
            item_weight = offline_losses.awr_weights(advantage, iql.temperature, iql.max_weight)
            imitation_weight = float(item_weight.mean())
        else:
            imitated, improves = offline_losses.best_candidate(
                asked[:, 1:], q_target_asked[:, 1:], value.detach(), iql.advantage_threshold
            )
            item_weight = improves.float()
            imitation_weight = float(item_weight.mean())
        policy_loss = self._imitate(logits, imitated, item_weight, weights)

        q_mean = q_taken.detach().mean(dim=0)
        td = (q_mean - td_target).abs()
        return UpdateResult(
            float(critic_loss.detach()),
            float(q_mean.mean()),
            grad_norm,
            td.cpu().numpy(),
            policy_loss=policy_loss,
            imitation_weight=imitation_weight,
        )

    def _warmup_kept(self, batch: dict[str, torch.Tensor], advantage: torch.Tensor) -> torch.Tensor:
        """The data actions pi clones before `policy_starts` ([B] 0/1): none, or filtered BC's
        selection (the batch's top `top_k_percent` transitions by episode return); none either when
        the batch has no `episode_return` (see the class docstring)."""
        if self.config.iql.policy_warmup == "none":
            return torch.zeros_like(advantage)
        if "episode_return" not in batch:
            if not self._warned_no_returns:
                self._warned_no_returns = True
                log.warning(
                    "update %d: pi's filtered-BC warm-up (until learner.policy_starts=%d) gets batches without "
                    "episode_return (a learner restarted without a checkpoint online?): pi learns nothing until then",
                    self.updates,
                    self.config.iql.policy_starts,
                )
            return torch.zeros_like(advantage)
        episode_return = _episode_return(batch, f"{self.config.loss} (policy_warmup)")
        return offline_losses.top_returns(episode_return, self.config.filtered_bc.top_k_percent).float()

    def after_update(self, updates: int) -> bool:
        if self.critic_target is not None:
            update_target(self.critic, self.critic_target, self.config.target, updates)
        return periodic_reset(self, self.config.resets, updates)

    def set_learning_rate(self, updates: int) -> float:
        """Sets both optimizers' rate to the configured `lr` (no schedule for this loss), whatever
        a loaded checkpoint's optimizer state held; returns it."""
        for optimizer in (self.policy_optimizer, self.critic_optimizer):
            set_learning_rate(optimizer, self.config.optimizer.lr)
        return self.config.optimizer.lr

    def reset(self, which: str) -> None:
        """Re-initialises the heads (or every layer) of pi and the critics, with their optimizer
        state; the target critics follow."""
        reinitialise_with_optimizer(self.policy, self.policy_optimizer, which)
        reinitialise_with_optimizer(self.critic, self.critic_optimizer, which)
        if self.critic_target is not None:
            self.critic_target.load_state_dict(self.critic.state_dict())

    def state_dict(self) -> dict:
        state = {
            "policy": self.policy.state_dict(),
            "critic": self.critic.state_dict(),
            "policy_optimizer": self.policy_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "updates": torch.tensor(self.updates),
        }
        if self.critic_target is not None:
            state["critic_target"] = self.critic_target.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.updates = int(state.get("updates", self.config.iql.policy_starts))  # older checkpoints: trained
        if self.critic_target is not None:
            self.critic_target.load_state_dict(state["critic_target"])


class FilteredBCAgent(_PolicyAgent):
    """Filtered behaviour cloning: maximise log pi(a_data|s) over the transitions whose episode
    return is in the top `top_k_percent` of the batch (`offline_losses.top_returns`: with 0/1
    returns and fewer successes than k% of the batch, the successes only), averaged over those kept. A baseline for the value-based learners: it can only be as good as the data's best
    episodes.

    The top k% is taken per batch, over transitions: long episodes hold more transitions, so they
    weigh more than in a top-k% of episodes (where long episodes are the good ones, as in CartPole,
    fewer than k% of the episodes are kept). `loss` and `policy_loss` are the BC loss, `grad_norm`
    pi's, `imitation_weight` the share kept; `q_mean` is 0 and `td_abs` None (no Q function, no
    priorities). A NaN or infinite `episode_return` is refused (`MalformedColumnError`).
    """

    def update(self, batch: dict[str, torch.Tensor], weights: torch.Tensor) -> UpdateResult:
        episode_return = _episode_return(batch, self.config.loss)
        kept = offline_losses.top_returns(episode_return, self.config.filtered_bc.top_k_percent).float()
        log_likelihood = offline_losses.log_likelihood(self.policy(batch["obs"]), batch["action"])
        loss = -(weights * kept * log_likelihood).sum() / kept.sum()
        max_grad_norm = self.config.optimizer.max_grad_norm
        grad_norm = step(self.policy_optimizer, loss, list(self.policy.parameters()), max_grad_norm)
        loss_value = float(loss.detach())
        return UpdateResult(
            loss_value, 0.0, grad_norm, None, policy_loss=loss_value, imitation_weight=float(kept.mean())
        )

    def after_update(self, updates: int) -> bool:
        return periodic_reset(self, self.config.resets, updates)

    def set_learning_rate(self, updates: int) -> float:
        """Sets pi's optimizer's rate to the configured `lr` (no schedule for this loss), whatever
        a loaded checkpoint's optimizer state held; returns it."""
        set_learning_rate(self.policy_optimizer, self.config.optimizer.lr)
        return self.config.optimizer.lr

    def reset(self, which: str) -> None:
        """Re-initialises pi's head (or every layer) with its optimizer state."""
        reinitialise_with_optimizer(self.policy, self.policy_optimizer, which)

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "policy_optimizer": self.policy_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
