"""`Prefetcher`: background threads that keep K sampled batches ready for the learner.

    prefetcher = Prefetcher(sharded, batch_size=256, depth=8, threads=2)
    for batch in prefetcher:          # never waits on the network while data is available
        ...
    prefetcher.close()

A consumer that hands each batch back when done with it (`prefetcher.release(batch)`) has it freed
on the sampler threads instead of its own (see `release`).

With `device` set ("cpu", "cuda", "cuda:0", or a torch.device) batches arrive as `TorchBatch`:
columns and weights as torch tensors already on the device (through pinned memory when the device
is CUDA). Without it they are the source's numpy `Sample`s.
"""

from __future__ import annotations

import collections
import queue
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from replay.errors import DeadlineExceededError
from replay.sample import Sample
from replay.source import ReplaySource

_STOP = object()


@dataclass(frozen=True)
class TorchBatch:
    """A sample moved to a torch device. Keys stay numpy (they go back to the replay)."""

    data: dict[str, Any]
    """Column name -> torch tensor on the device."""
    weights: Any
    """float32 importance weights on the device."""
    keys: np.ndarray
    probabilities: np.ndarray
    sample: Sample
    """The numpy sample this came from."""


def to_torch(sample: Sample, device) -> TorchBatch:
    """A sample's arrays as torch tensors on `device` (pinned staging for CUDA).

    Read-only arrays (views of a received response) are copied; writable ones (the sample's own:
    copied out of the same-host feed's slot, or gathered in-process) are shared on CPU, not
    copied: a source must not reuse or change an array after handing it out in a Sample.
    """
    import torch  # only the learner side needs torch

    device = torch.device(device)
    pin = device.type == "cuda"

    def move(array: np.ndarray):
        # Received buffers are read-only views of the response: copied. A writable array is the
        # sample's own (copied out of the same-host feed's slot, or gathered in-process): shared.
        tensor = torch.from_numpy(np.array(array, copy=not array.flags.writeable))
        if pin:
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=pin)

    return TorchBatch(
        data={name: move(column) for name, column in sample.data.items()},
        weights=move(sample.weights.astype(np.float32)),
        keys=sample.keys,
        probabilities=sample.probabilities,
        sample=sample,
    )


class Prefetcher:
    """Keeps up to `depth` batches sampled ahead of the consumer.

    Args:
        source: what to sample from (a `ReplayClient`, `ShardedReplay` or `MixedReplay`).
        batch_size: items per batch.
        depth: batches kept ready: whole requests are queued, floor(depth / batches_per_request)
            of them but at least one, so the queue holds at most `depth` batches (one request when
            a request is bigger than `depth`); the rest of the request being served (fewer than
            `batches_per_request`) comes on top.
        threads: concurrent samplers (each holds one request in flight).
        batches_per_request: batches drawn per round trip.
        beta: importance-sampling exponent (None: the source's default).
        device: None for numpy `Sample`s, else a torch device for `TorchBatch`es.

    Errors raised by the source in a background thread are raised by `next()`.

    A request's batches are queued together and handed out one by one from the consumer's side:
    a sampler waiting for room is woken once per request taken, not once per batch. Each wake-up
    makes it want the GIL back while the consumer (the learner) runs; on a loaded 2-core machine
    that showed as 13-17% of the learner thread spent waking samplers in UTD 4 CartPole runs.
    """

    POLL_S = 0.5
    """Longest a sampler thread waits on the replay before checking whether it should stop."""

    def __init__(
        self,
        source: ReplaySource,
        batch_size: int,
        *,
        depth: int = 8,
        threads: int = 2,
        batches_per_request: int = 1,
        beta: float | None = None,
        device=None,
    ):
        if depth < 1 or threads < 1 or batches_per_request < 1:
            raise ValueError("depth, threads and batches_per_request must be >= 1")
        self._source = source
        self._batch_size = batch_size
        self._per_request = batches_per_request
        self._beta = beta
        self._device = device
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth // batches_per_request))  # of requests
        self._taken: collections.deque = collections.deque()  # the rest of the request being served
        self._stop = threading.Event()
        self._spent: collections.deque = collections.deque()  # released batches, oldest first
        self._spent_lock = threading.Lock()  # one sampler frees at a time: never the newest
        self.delivered = 0
        self._threads = [threading.Thread(target=self._fill, name=f"prefetch-{i}", daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def _fill(self) -> None:
        while not self._stop.is_set():
            self._free_spent()
            try:
                # A bounded wait, so that close() is noticed while the replay holds samples back
                # (min_size, or the samples-per-insert budget spent).
                samples = self._source.sample_batches(
                    self._batch_size, self._per_request, beta=self._beta, timeout=self.POLL_S
                )
                items = [to_torch(s, self._device) if self._device is not None else s for s in samples]
            except DeadlineExceededError:
                continue
            except Exception as exc:  # handed to the consumer, who decides
                items = [exc]
            while items and not self._stop.is_set():
                try:
                    self._queue.put(items, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if items and isinstance(items[0], Exception):
                return

    def __iter__(self):
        return self

    def __next__(self):
        return self.get()

    def get(self, timeout: float | None = None):
        """The next batch; raises a background error, or queue.Empty after `timeout`."""
        if self._stop.is_set():
            raise StopIteration
        try:
            item = self._taken.popleft()
        except IndexError:
            first, *rest = self._queue.get(timeout=timeout)
            self._taken.extend(rest)
            item = first
        if isinstance(item, Exception):
            raise item
        self.delivered += 1
        return item

    def release(self, batch) -> None:
        """Hands back a batch the consumer is done with, to be freed on a sampler thread (before
        its next request) rather than on the consumer's.

        Why: py-spy put 5-12% of the learner thread at the line that drops the last batch in UTD 4
        CartPole runs of `qfleet train` on a loaded 2-core machine (docs/benchmarks.md, "Where a UTD
        4 learner's time goes"); on its own, a free costs microseconds, so that share is the thread
        waiting there (for the GIL or the CPU). The newest released batch is kept until the next one
        comes: the consumer may still hold it (its loop variable), and whoever drops the last
        reference frees it.
        """
        self._spent.append(batch)

    def _free_spent(self) -> None:
        """Drops every released batch but the newest (see `release`)."""
        with self._spent_lock:
            while len(self._spent) > 1:
                self._spent.popleft()

    @property
    def ready(self) -> int:
        """Batches waiting right now (a queued background error is not a batch)."""
        with self._queue.mutex:
            queued = sum(len(items) for items in self._queue.queue if not isinstance(items[0], Exception))
        return queued + len(self._taken)

    def close(self) -> None:
        """Stops the sampler threads (a request in flight finishes first) and drops every batch
        it still holds (queued, being served, released), so none waits for the prefetcher's
        collection."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        with self._spent_lock:  # a sampler that outlived its join may still be freeing
            self._spent.clear()
        self._taken.clear()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
