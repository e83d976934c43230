"""Vocabulary changes off the frame path, without ROS.

A ``classes`` change is validated by the parameter callback (refused at once with a reason),
then handed to :class:`VocabularyUpdater`: its own thread encodes the names
(``Segmenter.prepare_vocabulary``, batched, cancellable) while the worker keeps labelling
frames with the current vocabulary. Once encoded, the worker activates it between two rounds
(:meth:`VocabularyUpdater.activate`), so every frame is labelled by exactly one version and
``~/vocabulary`` is published before the first labels that use the new one.

A newer change supersedes a pending one: its encoding is cancelled between two batches, and a
vocabulary encoded but not yet activated is dropped; only the newest change ever takes effect.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ovseg_ros.segmentation.vocabulary import Vocabulary
from ovseg_ros.segmentation.vocabulary_state import PreparedVocabulary, VocabularyCancelled


@dataclass(frozen=True)
class Pending:
    """A change being encoded: ``done`` of ``total`` new names (``total`` 0: not known yet)."""

    request: int  # numbers the node's changes, from 1
    entries: int
    done: int = 0
    total: int = 0


@dataclass(frozen=True)
class Activation:
    """A change that took effect: the vocabulary with its version, and what it cost."""

    vocabulary: Vocabulary
    encoded: int  # names the text model encoded (others came from the cache)
    encoding_s: float  # time spent preparing (validation + encoding)
    waited_s: float  # from the request to the activation

    def message(self, version: int) -> str:
        """The log line: public ``version``, size, how long encoding and waiting took."""
        names = self.vocabulary.names
        return (
            f"vocabulary v{version} ({len(names)} classes) active {self.waited_s:.2f} s after "
            f"the request; encoding {self.encoded} new names took {self.encoding_s:.2f} s: "
            + ", ".join(names[:20])
            + (" ..." if len(names) > 20 else "")
        )


class VocabularyUpdater:
    """One background thread that prepares the newest requested vocabulary.

    ``segmenter()`` returns the current engine (None while unconfigured: a request then
    waits for one), ``on_ready()`` is called when a vocabulary is ready to activate (wakes the
    worker), ``log(level, message)`` reports (``level`` ``"info"`` or ``"error"``).
    """

    def __init__(
        self,
        segmenter: Callable[[], Any],
        on_ready: Callable[[], None],
        log: Callable[[str, str], None],
    ) -> None:
        self._segmenter, self._on_ready, self._log = segmenter, on_ready, log
        self._cond = threading.Condition()
        self._requests = 0
        self._wanted: tuple[int, list[str], float] | None = None  # (request, classes, asked at)
        self._pending: Pending | None = None
        self._ready: tuple[PreparedVocabulary, float] | None = None  # (prepared, asked at)
        self._stopping = False
        self._thread: threading.Thread | None = None

    def request(self, classes: list[str]) -> int:
        """Encode ``classes`` in the background, superseding any pending change; its number."""
        with self._cond:
            self._requests += 1
            self._wanted = (self._requests, list(classes), time.monotonic())
            self._pending = Pending(self._requests, len(classes))
            self._ready = None  # encoded but not active yet: superseded too
            self._stopping = False
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="ovseg-vocabulary", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
            return self._requests

    def pending(self) -> Pending | None:
        """The change being encoded or waiting for activation, if any."""
        with self._cond:
            return self._pending

    def activate(self, activate: Callable[[PreparedVocabulary], Vocabulary]) -> Activation | None:
        """Worker side, between rounds: make a ready vocabulary active with ``activate``
        (``Segmenter.activate_vocabulary``); None if none is ready or it was superseded."""
        with self._cond:  # a request arriving meanwhile waits: it supersedes this one after
            if self._ready is None:
                return None
            (prepared, asked_at), self._ready = self._ready, None
            self._pending = None  # a newer request would have dropped _ready
            try:
                vocabulary = activate(prepared)
            except VocabularyCancelled:
                return None
        waited = time.monotonic() - asked_at
        return Activation(vocabulary, prepared.encoded, prepared.seconds, waited)

    def cancel(self) -> None:
        """Forget pending changes (configure reads ``classes`` itself; cleanup drops models)."""
        with self._cond:
            self._wanted, self._pending, self._ready = None, None, None
            self._requests += 1  # an encoding in progress sees it is superseded
            self._cond.notify_all()

    def stop(self, timeout: float) -> bool:
        """Cancel and end the thread; False if it is still inside an encoding batch."""
        with self._cond:
            self._stopping = True
        self.cancel()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    # -- the thread ----------------------------------------------------------------------------

    def _superseded(self, request: int) -> bool:
        with self._cond:
            return self._stopping or self._requests != request

    def _progress(self, request: int, done: int, total: int) -> None:
        with self._cond:
            if self._pending is not None and self._pending.request == request:
                self._pending = Pending(request, self._pending.entries, done, total)

    def _next(self) -> tuple[int, list[str], float, Any] | None:
        """Wait for a request and a segmenter; None when stopping."""
        with self._cond:
            while not self._stopping:
                segmenter = self._segmenter() if self._wanted is not None else None
                if segmenter is not None:
                    request, classes, asked_at = self._wanted
                    return request, classes, asked_at, segmenter
                # Waiting for a segmenter (configure in progress) is polled; requests notify.
                self._cond.wait(0.2 if self._wanted is not None else None)
            return None

    def _run(self) -> None:
        while (job := self._next()) is not None:
            request, classes, asked_at, segmenter = job
            try:
                prepared = segmenter.prepare_vocabulary(
                    classes,
                    progress=lambda done, total, r=request: self._progress(r, done, total),
                    cancel=lambda r=request: self._superseded(r),
                )
            except VocabularyCancelled:
                self._finish(request, None, asked_at)
                self._log("info", f"vocabulary change #{request} superseded before it took effect")
                continue
            except Exception as exc:  # noqa: BLE001 - validated before; report, keep the old one
                self._finish(request, None, asked_at)
                error = f"{type(exc).__name__}: {exc}"
                self._log("error", f"vocabulary change #{request} failed: {error}")
                continue
            if self._finish(request, prepared, asked_at):
                self._on_ready()

    def _finish(self, request: int, prepared: PreparedVocabulary | None, asked_at: float) -> bool:
        """Record the outcome of ``request``; True if it is ready and still the newest."""
        with self._cond:
            if self._requests != request:
                return False  # superseded meanwhile: the newer one is in _wanted
            self._wanted = None
            if prepared is None:
                self._pending = None
                return False
            self._ready = (prepared, asked_at)
            return True


def pending_info(pending: Pending | None, version: int) -> dict[str, int]:
    """The diagnostics fields of a pending change (``NodeInfo.pending_*``); it will become
    ``version + 1`` (a superseded change never takes a version)."""
    if pending is None:
        return {}
    return {
        "pending_version": version + 1,
        "pending_done": pending.done,
        "pending_total": pending.total,
    }


def accepted_message(number: int, classes: list[str], version: int) -> str:
    """The log line of an accepted change while version ``version`` stays in use."""
    return (
        f"vocabulary change #{number} ({len(classes)} classes) accepted: encoding in the "
        f"background; frames keep using v{version} meanwhile"
    )
