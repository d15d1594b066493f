"""Child process of the resume test: resume a Learner from a checkpoint, apply one update to a
given batch, and write the resulting parameters (safetensors) and counters (JSON)."""

import json
import sys

import numpy as np
import torch
from safetensors.torch import save_file

from learner import ActionSpace, Learner, LearnerConfig


def main(config_json: str, checkpoint_dir: str, batch_npz: str, out_prefix: str) -> None:
    config = LearnerConfig(**json.loads(config_json))
    space = ActionSpace(low=(-1.0,), high=(1.0,)) if config.loss == "sac" else ActionSpace(num_actions=2)
    learner = Learner(config, None, (4,), space, checkpoint_dir=checkpoint_dir)
    with np.load(batch_npz, allow_pickle=False) as arrays:
        batch = {name: torch.from_numpy(arrays[name]) for name in arrays.files}
    weights = batch.pop("weights")
    learner.agent.update(batch, weights)
    state = {
        f"{net}.{k}": v
        for net, sd in learner.agent.state_dict().items()
        if net in ("online", "actor", "critic")
        for k, v in sd.items()
    }
    save_file({k: v.contiguous() for k, v in state.items()}, out_prefix + ".safetensors")
    with open(out_prefix + ".json", "w") as handle:
        json.dump({"updates": learner.updates, "version": learner.version}, handle)


if __name__ == "__main__":
    main(*sys.argv[1:])
