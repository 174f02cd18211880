"""Per-image evaluation records: plain JSON values, the rows of a batch, and their gathering across processes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rece_lightning.errors import RECEError

__all__ = ["ATTACK_KEYS", "IDENTITY_KEYS", "gather_records", "mean", "merge_records", "plain", "public", "record_key", "rows_of"]


IDENTITY_KEYS: tuple[str, ...] = ("row", "case_number", "prompt", "seed", "guidance")
"""Keys copied from the prompt row into every record (see :func:`rece_lightning.artefacts.prompts.read_prompts`)."""


def plain(value: Any) -> Any:
    """``value`` as plain JSON data: numpy/torch scalars and arrays become numbers and lists, tuples become lists,
    paths become strings and non-finite floats become ``None`` (strict JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    raise RECEError(f"metric records must hold JSON values; got {type(value).__name__} ({value!r:.80})")


def public(record: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON part of a record: keys starting with ``_`` are private payload (e.g. feature vectors gathered for a
    set statistic) and are never written."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def rows_of(batch: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Column-wise batch (:func:`rece_lightning.lightning.data.collate_rows`) → one dict per row."""
    n = len(next(iter(batch.values()))) if batch else 0
    return [{key: values[i] for key, values in batch.items()} for i in range(n)]


ATTACK_KEYS: tuple[str, ...] = ("attack", "adversarial_prompt", "attack_info")
"""Keys of ``rece test`` rows (one row per prompt and attack), copied into records when present."""


def record_key(record: Mapping[str, Any]) -> tuple[str, int]:
    """The deduplication key of a record: its attack (``""`` outside ``rece test``) and prompt-file ``row``."""
    key = record.get("row")
    if key is None:
        raise RECEError("a metric record has no 'row'; prompt rows must come from rece_lightning.artefacts.prompts.read_prompts")
    return str(record.get("attack") or ""), int(key)


def merge_records(per_rank: Iterable[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Flatten the record lists of all processes, keep the first record of every ``row`` (padding duplicates of a
    ``DistributedSampler`` are dropped) and sort by ``row``: the result does not depend on the number of processes."""
    merged: dict[int, dict[str, Any]] = {}
    for records in per_rank:
        for record in records:
            merged.setdefault(record_key(record), dict(record))
    return [merged[k] for k in sorted(merged)]


def gather_records(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Every process's record list (``torch.distributed.all_gather_object``), or ``[records]`` without DDP."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, records)
        return [list(r or []) for r in gathered]
    return [records]


def mean(values: Sequence[float | bool]) -> float:
    """Arithmetic mean in float64 over values in the given (row) order."""
    return float(np.mean(np.asarray(values, dtype=np.float64)))
