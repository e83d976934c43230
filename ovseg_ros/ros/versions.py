"""Which vocabulary version labelled which image: the ``valid_from`` bookkeeping (no ROS).

``~/vocabulary`` carries, per version, ``valid_from``: camera -> header stamp of that
camera's first frame labelled with the version. The message is (re-)published before the
labels of a frame that adds an entry. Rule for subscribers: a label image from camera ``c``
with stamp ``t`` belongs to the highest version whose ``valid_from[c] <= t``.

The node's first version is valid from stamp 0 for every camera. Published version numbers
keep increasing across a cleanup (a new segmenter numbers its vocabularies from 1 again).
When a camera's stamps go backwards (a bag played in a loop), its entry moves back to the
new stamp, so the newest images stay mapped correctly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from ovseg_ros.outputs import vocabulary_json
from ovseg_ros.segmentation.vocabulary import Vocabulary


class VersionLog:
    """The current public vocabulary version and its ``valid_from`` map."""

    def __init__(self) -> None:
        self._offset = 0  # public version = segmenter version + offset
        self.version = 0  # last public version (0: none yet)
        self.vocabulary: Vocabulary | None = None
        self.valid_from: dict[str, int] = {}

    def new_version(self, vocabulary: Vocabulary, cameras: Iterable[str]) -> str:
        """Make ``vocabulary`` current; the JSON to publish now (before any frame uses it)."""
        first = self.version == 0
        self.vocabulary = dataclasses.replace(vocabulary, version=vocabulary.version + self._offset)
        self.version = self.vocabulary.version
        self.valid_from = dict.fromkeys(cameras, 0) if first else {}
        return self.json()

    def frames(self, stamps: Mapping[str, int]) -> str | None:
        """Record a round of frames about to be published (camera -> stamp in nanoseconds);
        the JSON to publish first if any camera's ``valid_from`` changed, else None."""
        if self.vocabulary is None:
            return None
        changed = False
        for camera, stamp_ns in stamps.items():
            known = self.valid_from.get(camera)
            if known is None or known > stamp_ns:
                self.valid_from[camera] = stamp_ns
                changed = True
        return self.json() if changed else None

    def release(self) -> None:
        """The segmenter goes away: the next one's versions continue after this one."""
        self._offset = self.version
        self.vocabulary = None
        self.valid_from = {}

    def json(self) -> str:
        if self.vocabulary is None:
            raise RuntimeError("no vocabulary version yet")
        return vocabulary_json(self.vocabulary, self.valid_from)
