"""Vocabulary: the classes a robot cares about, each an entry of ';'-separated synonyms."""

from __future__ import annotations

import colorsys
import hashlib
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SYNONYM_SEPARATOR = ";"
MAX_NAME_LENGTH = 200  # CLIP's context is 77 tokens; longer names are certainly a mistake
MAX_ENTRIES = 4096  # far beyond any benchmark (LVIS: 1203); guards against runaway requests
# Label ids of vocabularies up to this size fit in 8 bits with 255 left for "unlabeled"
# (vision_msgs/LabelInfo's convention: 255 in mono8 label images, 65535 in mono16).
UINT8_LABEL_ENTRIES = 254


def unlabeled_id(num_entries: int) -> int:
    """The label of a pixel no class reaches ``prob_threshold`` on: 255 for vocabularies of
    up to :data:`UINT8_LABEL_ENTRIES` entries (their ids fit 8 bits), else 65535."""
    return 255 if num_entries <= UINT8_LABEL_ENTRIES else 65535


@dataclass(frozen=True)
class VocabularyEntry:
    """One class: its display ``name`` (the first synonym), all ``synonyms`` and an RGB color."""

    name: str
    synonyms: tuple[str, ...]
    color: tuple[int, int, int]


@dataclass(frozen=True)
class Vocabulary:
    """An immutable, versioned list of entries. Label ``i`` in a result means ``entries[i]``."""

    entries: tuple[VocabularyEntry, ...]
    version: int

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def names(self) -> list[str]:
        return [entry.name for entry in self.entries]

    @property
    def queries(self) -> list[str]:
        """Every synonym in entry order: the texts that get embedded."""
        return [s for entry in self.entries for s in entry.synonyms]

    @property
    def query_to_entry(self) -> list[int]:
        """For each query (synonym), the index of its entry."""
        return [i for i, entry in enumerate(self.entries) for _ in entry.synonyms]

    def index(self, name: str) -> int:
        """Entry index of a name or any of its synonyms (case-insensitive)."""
        key = _key(name)
        for i, entry in enumerate(self.entries):
            if any(_key(s) == key for s in entry.synonyms):
                return i
        raise KeyError(f"{name!r} is not in the vocabulary {self.names}")

    def to_json_dict(self) -> dict:
        return {
            "version": self.version,
            "classes": [
                {"id": i, "name": e.name, "synonyms": list(e.synonyms), "color": list(e.color)}
                for i, e in enumerate(self.entries)
            ],
        }


def parse_entries(entries: Iterable[str] | str, *, strict: bool = True) -> list[tuple[str, ...]]:
    """Split and validate vocabulary entries; raise ``ValueError`` with the reason.

    Refused: a bare string (a common mistake for a one-class list), an empty list, a non-string,
    an entry that is blank or has a blank synonym, an entry with a control character (newline,
    tab, NUL, any Unicode category Cc: checked before whitespace is collapsed, so ``"do\nor"``
    is refused rather than read as ``"do or"``), and a name that appears twice (in one entry or
    across entries, compared case-insensitively), since two entries could never both win.
    ``strict=False`` accepts a name in several entries (the lower index wins ties): some
    benchmark class lists do that (COCO-Object has "bed" in its background entry too).
    """
    if isinstance(entries, str):
        raise ValueError("vocabulary must be a list of entries, not a single string")
    parsed: list[tuple[str, ...]] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, str):
            raise ValueError(f"entry {i} is {type(entry).__name__}, expected a string")
        control = next((c for c in entry if unicodedata.category(c) == "Cc"), None)
        if control is not None:
            raise ValueError(
                f"entry {i} ({entry!r}) contains a control character (U+{ord(control):04X}): "
                "class names must be printable text"
            )
        if not entry.strip():
            raise ValueError(f"entry {i} is blank")
        synonyms = tuple(" ".join(s.split()) for s in entry.split(SYNONYM_SEPARATOR))
        if any(not s for s in synonyms):
            raise ValueError(f"entry {i} ({entry!r}) has a blank synonym")
        for s in synonyms:
            if len(s) > MAX_NAME_LENGTH:
                raise ValueError(f"entry {i}: name longer than {MAX_NAME_LENGTH} characters")
            key = _key(s)
            if key in seen and (strict or seen[key] == i):
                where = "twice in the entry" if seen[key] == i else f"also in entry {seen[key]}"
                raise ValueError(f"duplicate name {s!r} in entry {i}: {where}")
            seen.setdefault(key, i)
        parsed.append(synonyms)
    if not parsed:
        raise ValueError("vocabulary is empty: give at least one class")
    if len(parsed) > MAX_ENTRIES:
        raise ValueError(f"{len(parsed)} entries: at most {MAX_ENTRIES} are supported")
    return parsed


def build_vocabulary(entries: Sequence[str], version: int, *, strict: bool = True) -> Vocabulary:
    """Validate ``entries`` and give each a stable color (same name -> same color)."""
    return Vocabulary(
        entries=tuple(
            VocabularyEntry(name=syn[0], synonyms=syn, color=class_color(syn[0]))
            for syn in parse_entries(entries, strict=strict)
        ),
        version=version,
    )


def class_color(name: str) -> tuple[int, int, int]:
    """A saturated color derived from the name, so a class keeps its color across changes."""
    digest = hashlib.blake2s(_key(name).encode("utf-8"), digest_size=4).digest()
    hue = int.from_bytes(digest[:2], "little") / 65536.0
    value = 0.75 + 0.25 * digest[2] / 255.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.8, value)
    return int(r * 255), int(g * 255), int(b * 255)


def _key(name: str) -> str:
    return " ".join(name.split()).casefold()
