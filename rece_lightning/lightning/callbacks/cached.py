"""Validation callbacks whose results the evaluation cache holds (:mod:`rece_lightning.artefacts.eval_cache`).

A callback mixes in :class:`CachedEvaluation` and says what its result depends on besides the model
(:meth:`CachedEvaluation.cache_parts`); at the start of a validation epoch it looks its entry up
(:meth:`CachedEvaluation.cache_lookup`: global rank zero reads, every process receives the entry), and on a miss it
stores its result at the end (:meth:`CachedEvaluation.cache_store`, global rank zero, after the gather). When every
callback that reads the validation images hits (:func:`evaluation_reused`), the module generates no image at all.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import Tensor

from rece_lightning.artefacts.eval_cache import EvalCache, cache_enabled, content_key
from rece_lightning.lightning.callbacks.records import plain

__all__ = ["CachedEvaluation", "evaluation_reused", "validation_rows"]


def validation_rows(trainer: L.Trainer) -> list[dict[str, Any]] | None:
    """Every prompt row of the validation dataloaders (``None`` when a loader's dataset does not list its rows)."""
    loaders = trainer.val_dataloaders
    loaders = list(loaders) if isinstance(loaders, list | tuple) else [loaders]
    rows: list[dict[str, Any]] = []
    for loader in loaders:
        dataset_rows = getattr(getattr(loader, "dataset", None), "rows", None)
        if dataset_rows is None:
            return None
        rows.extend(dataset_rows)
    return rows


def _full_validation(trainer: L.Trainer) -> bool:
    """Whether this validation runs on every row (a limited run scores a subset: never cached)."""
    limit = trainer.limit_val_batches
    return not trainer.sanity_checking and isinstance(limit, float) and limit == 1.0 and not trainer.fast_dev_run


class CachedEvaluation:
    """Mixin: a validation result read from and written to the evaluation cache.

    Attributes:
        cache_kind: the entry kind (a folder of the cache).
        cache_hit: whether this validation epoch's result came from the cache.
    """

    cache_kind = "records"
    cache_hit = False
    _cache_key: str | None = None

    def cache_parts(self, trainer: L.Trainer, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        """What the result depends on besides the model state (:meth:`RECEModule.evaluation_identity`), given every
        validation row; ``None`` when it cannot be cached."""
        return None

    def cache_status(self) -> dict[str, Any]:
        """What the run's records say about the cache: ``{"hit": bool, "key": …}`` or ``{"hit": False, "key":
        None}`` when it was off or did not apply."""
        return {"hit": self.cache_hit, "key": self._cache_key}

    def cache_lookup(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[dict, dict[str, Tensor]] | None:
        """This epoch's entry, or ``None`` (a miss, the cache is off, or the run validates a subset). Collective
        under DDP: global rank zero decides and every process receives its answer."""
        self.cache_hit, self._cache_key = False, None
        identity = getattr(pl_module, "evaluation_identity", None)
        if not (cache_enabled() and _full_validation(trainer) and callable(identity)):
            return None
        entry = None
        if trainer.is_global_zero:
            rows = validation_rows(trainer)
            parts = None if rows is None else self.cache_parts(trainer, rows)
            if parts is not None:
                from rece_lightning.version import __version__

                self._cache_key = content_key({"kind": self.cache_kind, "model": identity(), **plain(parts),
                                               "version": __version__})
                entry = EvalCache().load(self.cache_kind, self._cache_key)
        entry = trainer.strategy.broadcast(entry)
        self.cache_hit = entry is not None
        return entry

    def cache_label(self) -> str:
        """How the hit line names this result."""
        return type(self).__name__

    def cache_store(self, trainer: L.Trainer, meta: dict[str, Any], tensors: dict[str, Tensor] | None = None) -> None:
        """Write this epoch's result on global rank zero after a miss (nothing when the cache was not consulted)."""
        if trainer.is_global_zero and self._cache_key is not None and not self.cache_hit:
            EvalCache().save(self.cache_kind, self._cache_key, meta, tensors)


def evaluation_reused(trainer: L.Trainer, stage: str) -> bool:
    """Whether every callback that reads the validation images (overrides ``on_validation_batch_end``, unless its
    class sets ``reads_images = False``, e.g. a progress display) reuses its cached result this epoch, so that no
    image needs generating; says in one line what was reused."""
    hits = [cb.cache_label() for cb in trainer.callbacks if isinstance(cb, CachedEvaluation) and cb.cache_hit]
    readers = [cb for cb in trainer.callbacks
               if type(cb).on_validation_batch_end is not L.Callback.on_validation_batch_end
               and getattr(cb, "reads_images", True)]
    reused = bool(readers) and all(isinstance(cb, CachedEvaluation) and cb.cache_hit for cb in readers)
    if hits and trainer.is_global_zero:
        print(f"rece: cache hit: stage {stage!r}: {', '.join(hits)} reused from the evaluation cache"
              + ("; no image generated" if reused else ""), flush=True)
    return reused
