"""Where model weights come from, and one-line errors when they are missing or unusable.

Weights are read from a local file the user names, or from the Hugging Face hub cache where
``download_weights`` (or open_clip / timm) put them. Building a segmenter never downloads
unless ``allow_download`` is set, so a robot without network fails at once with a message
that says which file is missing and how to provide it. A file that is there but cannot be
used (a pickle holding more than tensors, a truncated file, another architecture's weights)
fails with one line naming the file and the problem (:class:`WeightsLoadError`).
"""

from __future__ import annotations

import os
import pickle
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .methods import method_spec

# open_clip stores its hub weights under these names, safetensors preferred.
_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_TIMM_FILES = ("model.safetensors", "pytorch_model.bin")


class WeightsNotFoundError(FileNotFoundError):
    """Raised at build time when the weights a config needs are not on this machine."""


class WeightsLoadError(WeightsNotFoundError):
    """A weights file is on the machine but cannot be used; the message is one line naming
    the file and what is wrong. A :class:`WeightsNotFoundError` so that every caller that
    reports missing weights without a traceback reports this the same way."""


class OfflineError(WeightsNotFoundError):
    """Weights must be downloaded but the hub cannot be reached (or ``HF_HUB_OFFLINE``)."""


@dataclass(frozen=True)
class WeightSource:
    """A hub repository and the candidate file names inside it (first found wins)."""

    description: str
    repo_id: str
    filenames: tuple[str, ...]


def clip_source(model_name: str, pretrained: str) -> WeightSource:
    """The hub location open_clip uses for ``model_name`` / ``pretrained``."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = [t for m, t in open_clip.list_pretrained() if m == model_name]
        raise ValueError(
            f"open_clip has no pretrained tag {pretrained!r} for {model_name!r}; known: {tags}"
        )
    hub = cfg.get("hf_hub", "")
    if not hub:
        raise ValueError(
            f"{model_name}/{pretrained} has no Hugging Face hub copy; download it yourself and "
            "set clip_weights to the file"
        )
    # "org/name/" means open_clip's default file names; "org/name/file.bin" names the file.
    if hub.endswith("/"):
        repo_id, files = hub.rstrip("/"), _CLIP_FILES
    else:
        repo_id, filename = os.path.split(hub)
        stem = filename.rsplit(".", 1)[0]
        files = (
            (f"{stem}.safetensors", filename)
            if not filename.endswith(".safetensors")
            else (filename,)
        )
    return WeightSource(f"CLIP {model_name} ({pretrained})", repo_id, files)


def clip_needs_quick_gelu(model_name: str, pretrained: str) -> bool:
    """OpenAI's CLIP weights were trained with QuickGELU; open_clip records it per tag."""
    import open_clip

    return bool((open_clip.get_pretrained_cfg(model_name, pretrained) or {}).get("quick_gelu"))


def dino_source(model_name: str) -> WeightSource:
    """The hub location timm uses for ``model_name`` (e.g. ``vit_base_patch16_224.dino``)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model_name)
    repo_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo_id:
        raise ValueError(f"timm has no hub weights for {model_name!r}")
    return WeightSource(f"DINO {model_name}", repo_id, _TIMM_FILES)


def resolve(
    source: WeightSource, local_file: str, cache_dir: str, allow_download: bool, config_key: str
) -> str:
    """Path of the weights file: ``local_file`` if given, else the hub cache (or a download)."""
    if local_file:
        path = Path(local_file).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"{source.description}: {config_key}={local_file!r} does not exist. Give the "
                "path of a .safetensors (preferred) or state-dict .bin/.pt file."
            )
        return str(path)
    from huggingface_hub import try_to_load_from_cache

    cache = cache_dir or None
    for filename in source.filenames:
        hit = try_to_load_from_cache(source.repo_id, filename, cache_dir=cache)
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    if allow_download:
        return _download(source, cache)
    where = cache or _hub_cache_dir()
    raise WeightsNotFoundError(
        f"{source.description} weights are not on this machine: looked for "
        f"{' or '.join(source.filenames)} of hub repository {source.repo_id!r} in {where}. "
        "Fetch them once with network: `ros2 run ovseg_ros download_weights`, copy the "
        "Hugging Face cache to this machine, or set "
        f"{config_key} to a local .safetensors file. (allow_download:=true lets the node "
        "download at start-up.)"
    )


def _download(source: WeightSource, cache_dir: str | None) -> str:
    from huggingface_hub import hf_hub_download

    check_online(f"download {source.description}")
    errors = []
    for filename in source.filenames:
        try:
            return hf_hub_download(source.repo_id, filename, cache_dir=cache_dir)
        except Exception as exc:  # noqa: BLE001 - try the next candidate, report all
            errors.append(f"{filename}: {exc}")
    raise WeightsNotFoundError(
        f"could not download {source.description} from {source.repo_id}: " + "; ".join(errors)
    )


def _hub_cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - very old huggingface_hub
        return "~/.cache/huggingface/hub"


def sources_for(config) -> list[tuple[WeightSource, str, str]]:
    """(source, local file, config key) for every weights file ``config`` needs."""
    cfg = config.resolved()
    needed = [(clip_source(cfg.clip_model, cfg.clip_pretrained), cfg.clip_weights, "clip_weights")]
    if method_spec(cfg.method).needs_dino:
        needed.append((dino_source(cfg.dino_model), cfg.dino_weights, "dino_weights"))
    return needed


# -- offline detection ---------------------------------------------------------------------------


def hub_offline_flag() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks huggingface_hub never to touch the network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def hub_host() -> tuple[str, int]:
    """Host and port of the hub endpoint (``HF_ENDPOINT``, default huggingface.co)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def check_online(what: str, timeout_s: float = 3.0) -> None:
    """Raise :class:`OfflineError` at once (not after minutes of retries) when the hub cannot
    be reached: ``HF_HUB_OFFLINE`` is set, or its host does not resolve / accept a TCP
    connection within ``timeout_s``."""
    if hub_offline_flag():
        raise OfflineError(f"cannot {what}: HF_HUB_OFFLINE is set (offline mode)")
    host, port = hub_host()
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OfflineError(
            f"cannot {what}: {host}:{port} is not reachable ({reason}); this machine seems "
            "to be offline"
        ) from None


# -- loading -------------------------------------------------------------------------------------


@contextmanager
def loading(path: str, description: str) -> Iterator[None]:
    """Turn any failure to load ``path`` inside the block into a one-line
    :class:`WeightsLoadError` (the original exception, with its advice, is dropped)."""
    try:
        yield
    except WeightsLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - every loader failure becomes one clear line
        raise WeightsLoadError(load_failure(path, description, exc)) from None


def load_failure(path: str, description: str, exc: BaseException) -> str:
    """One line: ``path`` and what is wrong with it, from the exception a loader raised."""
    text = str(exc)
    first = _first_line(text)
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        named = f" (it refers to {found.group(1)})" if found else ""
        return (
            f"{path}: not a weights file we load: a pickle that holds Python objects besides "
            f"tensors{named}, which could run code; use a .safetensors file of {description}"
        )
    if type(exc).__name__ == "SafetensorError":
        return f"{path}: truncated or corrupt safetensors file ({first})"
    if "Error(s) in loading state_dict" in text or "does not fit" in text:
        return f"{path}: not {description} weights (another architecture): {_mismatch(text)}"
    if isinstance(exc, (EOFError, pickle.UnpicklingError)) or "PytorchStreamReader" in text:
        return f"{path}: truncated or corrupt weights file ({first})"
    return f"{path}: cannot be loaded as {description} weights: {type(exc).__name__}: {first}"


def verify_file(path: str) -> None:
    """Check cheaply that ``path`` is a loadable weights file (header only for safetensors,
    a memory-mapped safe load otherwise); :class:`WeightsLoadError` if it is not."""
    with loading(path, "model"):
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as handle:
                handle.keys()
        else:
            import torch

            torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no detail"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _mismatch(text: str) -> str:
    """``missing 12 keys (e.g. a.b), unexpected 3 (e.g. c), 2 size mismatches (e.g. d)``."""
    parts = []
    for label, pattern in (("missing", "Missing key"), ("unexpected", "Unexpected key")):
        line = next((ln for ln in text.splitlines() if pattern in ln), "")
        keys = re.findall(r'"([^"]+)"', line)
        if keys:
            parts.append(f"{label} {len(keys)} keys (e.g. {keys[0]})")
    sizes = re.findall(r"size mismatch for ([^:]+):", text)
    if sizes:
        parts.append(f"{len(sizes)} shape mismatches (e.g. {sizes[0]})")
    if not parts:
        listed = re.findall(r"(missing|unexpected) \[([^\]]*)\]", text)
        parts = [f"{kind} [{keys[:80]}]" for kind, keys in listed if keys]
    return ", ".join(parts) or _first_line(text)
