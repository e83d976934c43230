"""A least-recently-used cache bounded in bytes, for the per-size tables of the cloud builder.

Ray tables and index maps depend on the image size: a camera whose size changes every frame
(or a hostile one) would otherwise fill a cache bounded only by its entry count with tables
of up to ~100 MB each. Here the oldest entries go once the cache holds more than
``max_bytes``; the newest entry always stays, whatever its size, so the current frame's
table is never rebuilt twice.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from threading import Lock
from typing import Generic, TypeVar

import numpy as np
import torch

V = TypeVar("V")


def nbytes(value: object) -> int:
    """Bytes held by a tensor or array (0 for None)."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    return 0


class ByteLRU(Generic[V]):
    """Thread-safe LRU cache of values (tensors, arrays) holding at most ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = Lock()

    def get_or_make(self, key: Hashable, make: Callable[[], V]) -> V:
        """The cached value of ``key``, made (outside the lock) and kept on a miss."""
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit[0]
        value = make()
        size = nbytes(value)
        with self._lock:
            if key not in self._items:
                self._items[key] = (value, size)
                self._bytes += size
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped
        return value

    @property
    def bytes(self) -> int:
        """Bytes held now."""
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
