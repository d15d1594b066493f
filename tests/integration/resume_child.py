"""Child process of the resume test: resume a Learner from a checkpoint, take one step on a given
batch, and write the resulting parameters (safetensors) and counters (JSON)."""

import json
import sys

import numpy as np
import torch
from safetensors.torch import save_file

from learner import ActionSpace, Learner, LearnerConfig
from replay import Sample, TorchBatch
from system.config.dataclass_args import build


def as_batch(data: dict[str, torch.Tensor], weights: torch.Tensor) -> TorchBatch:
    """A batch as the prefetcher hands it to `Learner.step` (keys 0..B-1, uniform draws)."""
    size = len(weights)
    keys, probabilities = np.arange(size, dtype=np.uint64), np.full(size, 1.0 / size)
    arrays = {name: tensor.numpy() for name, tensor in data.items()}
    sample = Sample(arrays, keys, probabilities, weights.numpy(), table_size=size, priority_mass=float(size))
    return TorchBatch(data, weights, keys, probabilities, sample)


def learned_parameters(learner: Learner) -> dict[str, torch.Tensor]:
    """The online networks' parameters (target networks and optimizer state left out)."""
    return {
        f"{net}.{k}": v
        for net, sd in learner.agent.state_dict().items()
        if net in ("online", "actor", "critic", "policy")
        for k, v in sd.items()
    }


def main(config_json: str, checkpoint_dir: str, batch_npz: str, out_prefix: str) -> None:
    config = build(LearnerConfig, json.loads(config_json), "learner")
    space = ActionSpace(low=(-1.0,), high=(1.0,)) if config.loss == "sac" else ActionSpace(num_actions=2)
    learner = Learner(config, None, (4,), space, checkpoint_dir=checkpoint_dir)
    with np.load(batch_npz, allow_pickle=False) as arrays:
        batch = {name: torch.from_numpy(arrays[name]) for name in arrays.files}
    weights = batch.pop("weights")
    learner.step(as_batch(batch, weights))
    state = learned_parameters(learner)
    save_file({k: v.contiguous() for k, v in state.items()}, out_prefix + ".safetensors")
    with open(out_prefix + ".json", "w") as handle:
        json.dump({"updates": learner.updates, "version": learner.version}, handle)


if __name__ == "__main__":
    main(*sys.argv[1:])
