"""Text-embedding cache: in memory, and on disk as safetensors keyed by model + templates.

A vocabulary change then costs only the names never seen before, and a robot that restarts
does not re-encode its classes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"  # bump when the way embeddings are computed changes
# In memory and on disk: ~32k names of ViT-B/16's 512 floats. A caller changing the classes at
# runtime again and again cannot grow it further: the least recently used names go.
MAX_CACHE_BYTES = 64 * 2**20


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ovseg_ros" / "text"


class EncodingCancelled(Exception):
    """Raised by ``TextEmbeddingCache.get`` when its ``cancel`` check fires between batches."""


Progress = Callable[[int, int], None]


class TextEmbeddingCache:
    """Maps a class name to its embedding ``[D]``; encodes missing names in batches.

    Thread safe: several threads may call ``get`` (each batch's names are stored as soon as
    they are encoded, so a cancelled request still saves the work done).

    Args:
        encode: names -> ``[len(names), D]`` embeddings.
        key: identifies the model weights and prompt templates (a different key never hits).
        directory: where the safetensors file lives; ``None`` keeps the cache in memory only.
        batch_names: names per call of ``encode`` (each is ``templates`` prompts).
        max_bytes: the embeddings kept (least recently used first out; never those of the
            names a ``get`` is returning).
    """

    def __init__(
        self,
        encode: Callable[[list[str]], torch.Tensor],
        key: str,
        directory: Path | None,
        *,
        batch_names: int = 64,
        max_bytes: int = MAX_CACHE_BYTES,
    ) -> None:
        self._encode = encode
        self.batch_names = max(1, int(batch_names))
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self.key = key
        digest = hashlib.sha256(f"{FORMAT_VERSION}|{key}".encode()).hexdigest()[:16]
        self.path = None if directory is None else Path(directory) / f"text-{digest}.safetensors"
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()  # oldest use first
        self.last_encoded: list[str] = []  # names the last ``get`` had to encode
        self._load()

    def missing(self, names: Sequence[str]) -> list[str]:
        """The distinct names of ``names`` not cached yet, in order."""
        with self._lock:
            return list(dict.fromkeys(n for n in names if n not in self._memory))

    def get(
        self,
        names: Sequence[str],
        *,
        progress: Progress | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> torch.Tensor:
        """Embeddings ``[len(names), D]`` (float32, CPU) in the order of ``names``.

        Missing names are encoded ``batch_names`` at a time; after each batch ``progress(done,
        total)`` is called (names encoded so far, names to encode) and ``cancel()`` checked:
        when it returns true, ``EncodingCancelled`` is raised (the encoded names stay cached).
        """
        missing = self.missing(names)
        self.last_encoded = missing
        try:
            for start in range(0, len(missing), self.batch_names):
                if cancel is not None and cancel():
                    raise EncodingCancelled(f"cancelled after {start} of {len(missing)} names")
                batch = missing[start : start + self.batch_names]
                embeddings = self._encode(batch).detach().float().cpu()
                if embeddings.shape[0] != len(batch):
                    raise RuntimeError("text encoder returned a wrong number of embeddings")
                with self._lock:
                    for name, emb in zip(batch, embeddings, strict=True):
                        self._memory[name] = emb.clone()
                if progress is not None:
                    progress(start + len(batch), len(missing))
        except BaseException:
            if missing:
                self._save()  # the names encoded before the failure stay cached
            raise
        with self._lock:
            for name in names:
                self._memory.move_to_end(name)
            embeddings = torch.stack([self._memory[n] for n in names])
            self._evict(keep=len(set(names)))
        if missing:
            self._save()
        return embeddings

    @property
    def nbytes(self) -> int:
        """Bytes of the embeddings held in memory."""
        with self._lock:
            return sum(e.element_size() * e.nelement() for e in self._memory.values())

    def _evict(self, keep: int) -> None:
        """Drop the least recently used names beyond ``max_bytes`` (lock held), keeping at
        least the ``keep`` most recent ones (the request being answered)."""
        if not self._memory:
            return
        per_name = next(iter(self._memory.values())).nelement() * 4
        limit = max(keep, self.max_bytes // max(per_name, 1))
        while len(self._memory) > limit:
            self._memory.popitem(last=False)

    def _load(self) -> None:
        if self.path is None or not self.path.is_file():
            return
        try:
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt") as handle:
                meta = handle.metadata() or {}
                if meta.get("key") != self.key:
                    return
                names = json.loads(meta["names"])
                table = handle.get_tensor("embeddings")
            self._memory.update({n: table[i].clone() for i, n in enumerate(names)})
            with self._lock:
                self._evict(keep=0)
        except Exception as exc:  # noqa: BLE001 - a corrupt cache is rebuilt, never fatal
            log.warning("ignoring unreadable text cache %s: %s", self.path, exc)

    def _save(self) -> None:
        if self.path is None:
            return
        from safetensors.torch import save_file

        with self._lock:
            names = list(self._memory)
            table = torch.stack([self._memory[n] for n in names]).contiguous()
        meta = {"key": self.key, "names": json.dumps(names), "format": FORMAT_VERSION}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename, so a crash or a second process never leaves a torn file.
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
            os.close(fd)
            save_file({"embeddings": table}, tmp, metadata=meta)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not write text cache %s: %s", self.path, exc)
