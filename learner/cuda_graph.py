"""An update captured once as a CUDA graph and replayed: the GPU learner's host launches one graph
instead of each of the update's ~60-120 small kernels (on an H200 the CartPole MLP's update spent
0.36 ms of its 2.7 ms in kernels; the rest was the host launching them: docs/benchmarks.md, "The
learner on a GPU").

A captured graph replays the exact kernels it recorded, on the exact memory it recorded, so:
- the inputs are copied into buffers the graph owns before each replay;
- the update must not read anything back to the host (no `.item()`, no `float(tensor)`): it
  returns its figures as one tensor, read once after the replay;
- what the capture baked in must not change behind its back: the input shapes and dtypes and each
  optimizer group's learning rate are its `signature`, and a change starts over (a few ordinary
  updates, then a new capture); so do a reset and a checkpoint load (`invalidate`), which replace
  the optimizer's state tensors.
Every update runs exactly once, with the same math: the warm-up updates CUDA graphs need before a
capture are ordinary updates of the run (on a side stream), and the capturing update is replayed
right after its capture (a capture records kernels without running them).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

WARMUP_UPDATES = 3
"""Ordinary updates (on a side stream) before each capture: they create the optimizer's state,
cuBLAS's handles and the autograd buffers the capture then records into its own memory pool."""


class GraphedUpdate:
    """Runs `update(inputs) -> tensor` as a replayed CUDA graph after `WARMUP_UPDATES` ordinary calls.

    Args:
        update: one whole update (forward, backward, optimizer step) on a dict of device tensors,
            returning one tensor of figures; no host reads inside.
        optimizer: the optimizer `update` steps; it must be `capturable` (its step counts on the
            device), and its groups' learning rates are part of the signature.
        device: the CUDA device everything lives on.
    """

    def __init__(self, update: Callable[[dict[str, torch.Tensor]], torch.Tensor], optimizer, device: torch.device):
        self.update, self.optimizer, self.device = update, optimizer, device
        self.captures = 0
        """Graphs captured so far (a signature change, reset or load makes another)."""
        self.replays = 0
        """Updates that ran as a replay of a captured graph."""
        self.disabled: str | None = None
        """Why updates run op by op for good (a capture failed), else None."""
        self._graph: torch.cuda.CUDAGraph | None = None
        self._inputs: dict[str, torch.Tensor] = {}
        self._output: torch.Tensor | None = None
        self._signature: tuple | None = None
        self._warmup_left = WARMUP_UPDATES
        # Streams of this update's own device (torch's shared capture stream is on the current
        # device, cuda:0 unless set: a cuda:1 learner's kernels would run beside an empty capture).
        self._side = torch.cuda.Stream(device)
        self._capture_stream = torch.cuda.Stream(device)

    def invalidate(self) -> None:
        """Drops the captured graph (after a reset or a load replaced state it recorded): the next
        updates warm up and capture again."""
        self._graph, self._inputs, self._output, self._signature = None, {}, None, None
        self._warmup_left = WARMUP_UPDATES

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """One update on `inputs`; its figures as a device tensor (valid until the next call)."""
        with torch.cuda.device(self.device):
            if self.disabled is not None:
                return self._on_side_stream(inputs)
            signature = self._signature_of(inputs)
            if self._graph is not None and signature == self._signature:
                for name, tensor in inputs.items():
                    self._inputs[name].copy_(tensor, non_blocking=True)
                self._graph.replay()
                self.replays += 1
                return self._output
            if self._graph is not None:  # something the capture baked in changed: warm up again
                self.invalidate()
            if self._warmup_left > 0:
                self._warmup_left -= 1
                return self._on_side_stream(inputs)
            try:
                return self._capture(inputs, signature)
            except Exception as exc:  # noqa: BLE001 - any failed capture: the update runs op by op
                return self._give_up(inputs, exc)

    def _on_side_stream(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        current = torch.cuda.current_stream(self.device)
        self._side.wait_stream(current)
        with torch.cuda.stream(self._side):
            output = self.update(inputs)
        current.wait_stream(self._side)
        return output

    def _capture(self, inputs: dict[str, torch.Tensor], signature: tuple) -> torch.Tensor:
        self._inputs = {name: tensor.clone() for name, tensor in inputs.items()}
        self.optimizer.zero_grad(set_to_none=True)  # the graph's backward writes the gradients it owns
        graph = torch.cuda.CUDAGraph()
        with warnings.catch_warnings():
            # torch only warns of a capture that recorded nothing (the work ran elsewhere): an error
            warnings.filterwarnings("error", message=".*CUDA Graph is empty.*")
            # thread_local: the prefetcher's threads go on copying batches to the device meanwhile
            # (in the default "global" mode their calls would fail the capture)
            with torch.cuda.graph(graph, stream=self._capture_stream, capture_error_mode="thread_local"):
                output = self.update(self._inputs)
        self._graph, self._signature, self._output = graph, signature, output
        self.captures += 1
        graph.replay()  # the capture recorded this update's kernels; now they run
        self.replays += 1
        return self._output

    def _give_up(self, inputs: dict[str, torch.Tensor], exc: Exception) -> torch.Tensor:
        """After a failed capture (which ran none of the update's kernels): op by op from now on,
        starting with this update, so that it still runs exactly once."""
        self.disabled = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.warning(
            "the learner's update could not be captured as a CUDA graph (%s); it runs op by op from "
            "now on (set learner.cuda_graph: false to skip the attempt)",
            self.disabled,
        )
        self._graph, self._inputs, self._output, self._signature = None, {}, None, None
        self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(self.device)
        return self._on_side_stream(inputs)

    def _signature_of(self, inputs: dict[str, torch.Tensor]) -> tuple:
        """What a capture bakes in: the inputs' shapes and dtypes and every optimizer group's
        settings (learning rate, betas, eps, weight decay, ...)."""
        shapes = tuple((name, tuple(tensor.shape), tensor.dtype) for name, tensor in sorted(inputs.items()))
        settings = tuple(
            tuple(sorted((key, _hashable(value)) for key, value in group.items() if key != "params"))
            for group in self.optimizer.param_groups
        )
        return shapes, settings


def _hashable(value):
    """A group setting as a comparable value (a tensor learning rate by its value)."""
    if isinstance(value, torch.Tensor):
        return float(value)
    if isinstance(value, list):
        return tuple(value)
    return value


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Sets `capturable` on every group of a (fused) Adam, with its step counts on the parameters'
    devices: what a captured step needs (also after a checkpoint load restored uncapturable groups)."""
    optimizer._warned_capturable_if_run_uncaptured = True  # torch's advice against it is for eager runs
    for group in optimizer.param_groups:
        group["capturable"] = True
        for parameter in group["params"]:
            state = optimizer.state.get(parameter)
            if state and "step" in state:
                state["step"] = torch.as_tensor(state["step"], dtype=torch.float32, device=parameter.device)
