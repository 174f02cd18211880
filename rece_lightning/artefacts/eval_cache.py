"""The evaluation cache: a stage's metric records (and what a metric needs from them) reused across runs.

Evaluating costs far more than erasing (the paper's protocol generates and judges thousands of images per stage),
and sweeps repeat stages: every run re-evaluates the unedited model (stage ``original``), and a sweep over RECE's
knobs (γ, λ, iterations) re-evaluates the identical ``uce`` stage. An entry holds the records of one metric for one
stage, keyed by a SHA-256 of everything that determines them (:func:`content_key`):

* the text-reading weights as edited (their bytes, :func:`~rece_lightning.artefacts.integrity.tensor_sha256`; never the
  stage's name), and the rest of the model's identity (:func:`model_identity`: the source, its files' names, sizes
  and modification times, or the testbed's weights; the dtype; the family's generation options);
* the prompt rows the metric scores (prompts, seeds, guidance and every other column) and the generation settings
  (scheduler and its configuration, steps, guidance scale, size, device kind);
* the metric: its class, its :meth:`~rece_lightning.lightning.callbacks.metric.ImageMetric.protocol` (thresholds, classes,
  weights' hashes, reference set …) and what else it declares (e.g. a hash of FID's reference features);
* the package version.

A hit reuses the records, private payload included (e.g. FID's per-image features, so the original stage still
becomes the reference of the later ones), and the summary is computed again from them: the numbers are those of a
fresh run. Entries are single safetensors files (JSON metadata, no pickle) written atomically, with a SHA-256 of
their content; a truncated or altered entry is ignored and rewritten. Under DDP only global rank zero reads (and
broadcasts) and writes, after the records of every process were gathered.

Location: ``$RECE_CACHE_DIR``, else ``$XDG_CACHE_HOME/rece-lightning``, else ``~/.cache/rece-lightning``. Off:
``RECE_CACHE=0`` in the environment, or ``rece … --no-cache``. ``rece cache info`` and ``rece cache clear`` show and
empty it (:mod:`rece_lightning.lightning.cache_command`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rece_lightning.files import CACHE_DIR_ENV, atomic_path, cache_dir, file_sha256, tensor_sha256

__all__ = ["CACHE_DIR_ENV", "CACHE_ENV", "EvalCache", "cache_dir", "cache_enabled", "content_key", "model_identity",
           "pack_records", "unpack_records"]

CACHE_ENV = "RECE_CACHE"
"""Environment variable: ``0`` (or ``false``, ``off``, ``no``) turns the cache off (``rece --no-cache`` sets it)."""
FORMAT = 1
"""Version of the entry layout (part of every key)."""


def cache_enabled() -> bool:
    """Whether the evaluation cache is on (the default; ``RECE_CACHE=0`` turns it off)."""
    return os.environ.get(CACHE_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def content_key(parts: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``parts`` as canonical JSON (sorted keys; other objects by their ``str``), by
    :func:`~rece_lightning.files.tensor_sha256` (the package's one hasher)."""
    text = json.dumps({"format": FORMAT, **parts}, sort_keys=True, default=str, ensure_ascii=True)
    return tensor_sha256({}, text)


def _folder_listing(path: Path) -> list[tuple[str, int, int]]:
    """Every file of a model folder: relative name, size and modification time (a content hash of gigabytes would
    cost more than it saves; any rewritten file changes its size or time)."""
    files = []
    for file in sorted(path.rglob("*")):
        if file.is_file():
            stat = file.stat()
            files.append((file.relative_to(path).as_posix(), stat.st_size, stat.st_mtime_ns))
    return files


def model_identity(pretrained: str, torch_dtype: str) -> dict[str, Any]:
    """What identifies the model besides its text-reading weights: the resolved source
    (:meth:`~rece_lightning.models.source.ModelSource.identity`: folder, Hub id and commit), the testbed's shipped
    files (their SHA-256) or the local folder's file listing, and the dtype."""
    from rece_lightning.models.source import resolve

    source = resolve(pretrained)
    if source.folder is None:
        import rece_lightning.testbed as testbed

        folder = Path(testbed.__file__).parent / "weights" / "pipeline"
        files: Any = {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*"))
                      if p.is_file()}
    else:
        files = _folder_listing(source.folder.resolve())
    return {"source": source.identity(), "files": files, "torch_dtype": torch_dtype}


def pack_records(records: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    """Records as JSON-able dicts and named tensors: private arrays (keys starting with ``_``, e.g. FID's features)
    are stored as tensors and referenced by name."""
    out, tensors = [], {}
    for i, record in enumerate(records):
        packed = {}
        for key, value in record.items():
            if isinstance(value, np.ndarray | Tensor):
                name = f"{i}/{key}"
                tensors[name] = torch.as_tensor(np.asarray(value) if isinstance(value, np.ndarray) else value).contiguous()
                packed[key] = {"__tensor__": name, "numpy": isinstance(value, np.ndarray)}
            else:
                packed[key] = value
        out.append(packed)
    return out, tensors


def unpack_records(records: Sequence[Mapping[str, Any]], tensors: Mapping[str, Tensor]) -> list[dict[str, Any]]:
    """Inverse of :func:`pack_records`."""
    out = []
    for record in records:
        unpacked = {}
        for key, value in record.items():
            if isinstance(value, dict) and "__tensor__" in value:
                tensor = tensors[value["__tensor__"]]
                unpacked[key] = tensor.numpy() if value.get("numpy") else tensor
            else:
                unpacked[key] = value
        out.append(unpacked)
    return out


def _digest(meta_text: str, tensors: Mapping[str, Tensor]) -> str:
    return tensor_sha256(tensors, meta_text)


class EvalCache:
    """A folder of entries ``<root>/<kind>/<key[:2]>/<key>.safetensors`` (see the module docstring).

    Args:
        root: the cache folder (default :func:`cache_dir`).
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir()

    def path(self, kind: str, key: str) -> Path:
        """Where the entry ``key`` of ``kind`` (e.g. ``records``) lives."""
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def load(self, kind: str, key: str) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
        """The entry's metadata and tensors, or ``None`` when it is absent, partial or does not match its SHA-256
        (such an entry is never trusted; the next :meth:`save` replaces it)."""
        from safetensors import safe_open

        path = self.path(kind, key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
            meta_text = header["meta"]
            if header.get("sha256") != _digest(meta_text, tensors):
                return None
            meta = json.loads(meta_text)
        except Exception:  # a partial or altered file fails in many ways; it is a miss, never an error
            return None
        if not isinstance(meta, dict) or meta.get("key") != key:
            return None
        return meta, tensors

    def save(self, kind: str, key: str, meta: Mapping[str, Any], tensors: Mapping[str, Tensor] | None = None) -> Path:
        """Write an entry atomically (temporary sibling + rename), with the SHA-256 of its content."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in (tensors or {}).items()}
        meta_text = json.dumps({**meta, "key": key}, sort_keys=True, ensure_ascii=False, allow_nan=False)
        path = self.path(kind, key)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"meta": meta_text, "sha256": _digest(meta_text, tensors)})
        return path

    def entries(self) -> list[Path]:
        """Every entry file (temporary files of writes in progress excluded)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("*/*/*.safetensors") if not p.name.startswith("."))

    def info(self) -> dict[str, Any]:
        """The folder, the number of entries and their bytes, per kind and in all."""
        kinds: dict[str, dict[str, int]] = {}
        for entry in self.entries():
            kind = kinds.setdefault(entry.parent.parent.name, {"entries": 0, "bytes": 0})
            kind["entries"] += 1
            kind["bytes"] += entry.stat().st_size
        return {"root": str(self.root), "entries": sum(k["entries"] for k in kinds.values()),
                "bytes": sum(k["bytes"] for k in kinds.values()), "kinds": kinds}

    def clear(self) -> tuple[int, int]:
        """Delete every entry (and leftover temporary files); returns (entries, bytes) removed."""
        removed = size = 0
        if not self.root.is_dir():
            return 0, 0
        for kind in [p for p in self.root.iterdir() if p.is_dir()]:
            for file in sorted(kind.glob("*/*")):
                if file.is_file() and file.suffix in (".safetensors", ".tmp"):
                    size += file.stat().st_size
                    removed += not file.name.startswith(".")
                    file.unlink()
            for folder in sorted(kind.glob("*"), reverse=True):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            if not any(kind.iterdir()):
                kind.rmdir()
        return removed, size
