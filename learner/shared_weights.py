"""`SharedWeights`: fetched weights whose tensors view a buffer other readers share, handed out
only as copies.

Why: through the object store a reader's tensors are views of its node's shared-memory copy of
the payload (on the learner's node, of the primary copy that other nodes pull). Torch has no
read-only tensors: a view over that memory is writable, and one write would change the weights of
every reader on the node, unnoticed. So the views never leave this class: `load_into` copies them
into a network (the one copy every reader makes anyway), and indexing returns a copy of its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from typing_extensions import Buffer


class SharedWeights(Mapping[str, torch.Tensor]):
    """A fetched state dict (name -> tensor) over a payload that may be shared with other readers.

    Args:
        payload: the decoded payload (kept alive as long as this object: the views point into it).
        views: the tensors `decode_weights(payload, in_place=True)` built over it.
    """

    def __init__(self, payload: Buffer, views: dict[str, torch.Tensor]):
        self._payload, self._views = payload, views

    def __getitem__(self, name: str) -> torch.Tensor:
        """A copy of the tensor `name` (writing to it changes nothing shared)."""
        return self._views[name].clone()

    def __iter__(self) -> Iterator[str]:
        return iter(self._views)

    def __len__(self) -> int:
        return len(self._views)

    def load_into(self, module: torch.nn.Module, strict: bool = True) -> None:
        """Copies the weights into `module`'s parameters and buffers (`load_state_dict`, which
        copies under no_grad and checks names and shapes); the shared payload is only read.

        Raises:
            RuntimeError: the names or shapes do not fit `module` (torch's message).
        """
        module.load_state_dict(self._views, strict=strict)

    @property
    def payload(self) -> memoryview:
        """The payload's bytes, read-only (e.g. to copy or checksum them)."""
        return memoryview(np.asarray(self._payload, dtype=np.uint8).reshape(-1)).toreadonly()
