"""Shared machinery of the evaluation callbacks: per-image records, DDP gathering, logging and audit JSON.

Concept-erasure numbers are notoriously hard to reproduce (papers disagree on detector versions, thresholds, class
sets and counting rules), so every metric here is explicit and recorded:

* each validation image yields one **record** (``row``, ``case_number``, ``prompt``, ``seed``, ``guidance`` plus the metric's own
  scores or labels, JSON values only);
* at the end of the epoch the records of all processes are gathered, **deduplicated by ``row``** (a
  ``DistributedSampler`` pads a shard by repeating rows) and sorted by ``row``, so the summary is computed from the
  same list in the same order on every process, whatever the number of processes;
* the summary is logged on every process with ``sync_dist=False`` (identical values, no collective, no deadlock);
* global rank zero writes ``<log_dir>/eval/<stage>/<name>.json`` (protocol, summary, records) atomically;
* the records of a validation epoch go to the evaluation cache (:mod:`rece_lightning.artefacts.eval_cache`), keyed by the model
  state, the scored rows and :meth:`ImageMetric.protocol`; a hit skips scoring (and, when every image reader hits,
  generating), the summary is computed again from the cached records, and the JSON's ``cache`` says so.

Subclasses implement :meth:`ImageMetric.score`, :meth:`ImageMetric.summarize` and :meth:`ImageMetric.protocol`.
One validation prompt file is assumed (``row`` is unique within it); records of a second validation dataloader
would share its row numbers.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image

from rece_lightning.artefacts.eval_cache import pack_records, unpack_records
from rece_lightning.errors import RECEError
from rece_lightning.files import atomic_path
from rece_lightning.lightning.callbacks.cached import CachedEvaluation
from rece_lightning.lightning.callbacks.records import (
    ATTACK_KEYS,
    IDENTITY_KEYS,
    gather_records,
    mean,
    merge_records,
    plain,
    public,
    record_key,
    rows_of,
)
from rece_lightning.lightning.callbacks.run import run_dir
from rece_lightning.lightning.run_results import markdown_table


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as ``(dotted.key, leaf)`` pairs (lists stay leaves)."""
    if isinstance(value, Mapping) and value:
        return [pair for k, v in value.items() for pair in _flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    return [(prefix, value)]


def judges(callbacks: Sequence[Any]) -> list[ImageMetric]:
    """The metric callbacks that can judge an image (they implement :meth:`ImageMetric.success`), in order: the
    first one judges attacks that stop early and the verdicts of image grids."""
    return [cb for cb in callbacks if isinstance(cb, ImageMetric) and type(cb).success is not ImageMetric.success]


class ImageMetric(CachedEvaluation, L.Callback, ABC):
    """Base class of the metric callbacks: score each validation batch, gather, summarise, log and write JSON.

    Subclasses implement

    * :meth:`score` (``images, rows -> records``, one dict of JSON values per image; keys starting with ``_`` are
      private payload that is gathered but never written),
    * :meth:`summarize` (``records -> {name: value}``; names are logged as ``<prefix>/<name>``), computed from all
      processes' deduplicated records sorted by ``row``,
    * :meth:`protocol` (everything needed to reproduce the numbers: versions, weights hashes, thresholds, rules),
    * optionally :meth:`prepare` (load models; called once per process before the first scored batch).

    Args:
        name: file name of the JSON (``<log_dir>/eval/<stage>/<name>.json``).
        prefix: logged names are ``<prefix>/<summary key>``, e.g. ``val/nudity_rate``; use distinct prefixes for two
            instances of one metric (e.g. ``val/t0.45``).
        save_json: write the audit JSON on global rank zero.
        sources: score only rows whose ``source`` (the stem of their prompt file, when several validation files
            are given) is listed, e.g. ``[nudity]`` for NudeNet and ``[coco_30k_val]`` for CLIP score and FID.
    """

    def __init__(self, name: str, prefix: str = "val", save_json: bool = True, sources: list[str] | None = None) -> None:
        if not name or "/" in name or name.startswith("."):
            raise RECEError(f"metric name {name!r} must be a plain file name, e.g. 'nudenet'")
        self.name, self.prefix, self.save_json = name, prefix.rstrip("/"), save_json
        self.sources = None if sources is None else list(sources)
        self._records: list[dict[str, Any]] = []
        self._stage: str | None = None
        self._prepared = False
        self.device = torch.device("cpu")
        self.last_summary: dict[str, float] = {}
        self.last_records: list[dict[str, Any]] = []
        self.last_path: Path | None = None
        self._cached: list[dict[str, Any]] | None = None  # this epoch's records, read from the evaluation cache

    # ---------------------------------------------------------------------------------- subclass API
    @abstractmethod
    def score(self, images: list[Image.Image], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One record per image (the identity keys are added by the caller)."""

    @abstractmethod
    def summarize(self, records: list[dict[str, Any]]) -> dict[str, float]:
        """Summary of all (gathered, deduplicated, row-sorted) records; omit a key rather than report NaN."""

    def protocol(self) -> dict[str, Any]:
        """What the numbers mean and how to reproduce them (written with every result)."""
        return {}

    def prepare(self, pl_module: L.LightningModule | None = None) -> None:
        """Load models (called once per process, lazily, before the first batch is scored)."""

    def success(self, record: Mapping[str, Any]) -> bool | None:
        """Whether a record's image shows the erased concept (``None`` when the row is not a target): the
        attack-success criterion of ``rece test``. Metrics that cannot judge return ``None``."""
        return None

    def verdict(self, record: Mapping[str, Any]) -> tuple[str, bool] | None:
        """A short verdict on one record's image and whether it is the wanted outcome (shown under the image in
        grids): ``("concept", False)`` or ``("erased", True)`` from :meth:`success`; ``None`` when it cannot
        judge the row."""
        success = self.success(record)
        return None if success is None else (("concept", False) if success else ("erased", True))

    def judge(self, images: Sequence[Image.Image], rows: Sequence[Mapping[str, Any]]) -> list[bool]:
        """Concept present in each image? (used by attacks that stop early on success, e.g. UnlearnDiffAtk)."""
        return [bool(self.success(r)) for r in self.records_for(images, rows)]

    def on_records(self, trainer: L.Trainer, records: list[dict[str, Any]], stage: str) -> None:
        """Called on every process with the gathered records before they are summarised (e.g. to keep them as a
        reference for later stages)."""

    def cache_state(self) -> dict[str, Any]:
        """What the records depend on besides the model, the rows and :meth:`protocol` (e.g. a reference set)."""
        return {}

    def cache_parts(self, trainer: L.Trainer, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The rows this metric scores (``sources``), its class, :meth:`protocol` and :meth:`cache_state`."""
        scored = [r for r in rows if self.sources is None or r.get("source") in self.sources]
        metric = f"{type(self).__module__}.{type(self).__qualname__}"
        return {"rows": scored, "metric": {"callback": metric, "protocol": self.protocol(), **self.cache_state()}}

    def cache_label(self) -> str:
        """``<name> records``."""
        return f"{self.name} records"

    # ------------------------------------------------------------------------------------ pure steps
    def records_for(self, images: Sequence[Image.Image], rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Score a batch and return complete records (identity keys first, JSON values only)."""
        if len(images) != len(rows):
            raise RECEError(f"{self.name}: {len(images)} images for {len(rows)} prompt rows")
        if not self._prepared:
            self.prepare(None)
            self._prepared = True
        scored = self.score(list(images), [dict(r) for r in rows])
        records = []
        for row, extra in zip(rows, scored, strict=True):
            ident = {k: plain(row.get(k)) for k in IDENTITY_KEYS}
            ident.update({k: plain(row[k]) for k in ATTACK_KEYS if k in row})
            if ident["row"] is None:
                ident["row"] = ident["case_number"]
            record_key(ident)
            private = {k: v for k, v in extra.items() if k.startswith("_")}
            records.append({**ident, **plain(public(extra)), **private})
        return records

    def result(self, records: list[dict[str, Any]], stage: str, extra: Mapping[str, Any] | None = None) -> dict:
        """The JSON document of one evaluation (see the module docstring)."""
        summary = {f"{self.prefix}/{k}": float(v) for k, v in self.summarize(records).items()}
        return {
            "metric": self.name,
            "callback": f"{type(self).__module__}.{type(self).__qualname__}",
            "stage": stage,
            **dict(extra or {}),
            "num_images": len(records),
            "protocol": plain(self.protocol()),
            "summary": plain(summary),
            "records": [public(r) for r in records],
        }

    @staticmethod
    def write_json(document: Mapping[str, Any], path: str | Path) -> Path:
        """Write ``document`` atomically (temporary sibling + rename)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False) + "\n",
                           encoding="utf-8")
        return path

    # ------------------------------------------------------------------------------------ Lightning
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._records, self._stage = [], None
        self.device = pl_module.device
        if not self._prepared and not trainer.sanity_checking:
            self.prepare(pl_module)  # before the cache key: a protocol may name what preparing found
            self._prepared = True
        entry = self.cache_lookup(trainer, pl_module)
        self._cached = None if entry is None else unpack_records(entry[0]["records"], entry[1])

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or self._cached is not None or not isinstance(outputs, Mapping) \
                or "images" not in outputs:
            return
        rows = outputs.get("rows", batch)
        rows = rows_of(rows) if isinstance(rows, Mapping) else list(rows)
        images = list(outputs["images"])
        if self.sources is not None:  # score only the prompt sets this metric is for
            keep = [i for i, row in enumerate(rows) if row.get("source") in self.sources]
            rows, images = [rows[i] for i in keep], [images[i] for i in keep]
        self._stage = self._stage or outputs.get("stage")
        if rows:
            with torch.no_grad():
                self._records.extend(self.records_for(images, rows))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._finish_epoch(trainer, pl_module, test=False)

    def _finish_epoch(self, trainer: L.Trainer, pl_module: L.LightningModule, *, test: bool) -> None:
        """Gather the epoch's records from every process, summarise (per attack in the test stage), log the summary
        on every process and, on global rank zero, the protocol and ``eval/<stage>/<name>.json``
        (``eval/test-<stage>/`` for ``rece test``)."""
        cached, self._cached = self._cached, None
        records = cached if cached is not None else merge_records(gather_records(self._records))
        self._records = []
        if not records:
            return
        self.last_records = [public(r) for r in records]
        stage = str(self._stage or getattr(pl_module, "stage", "model"))
        if not test:
            self.on_records(trainer, records, stage)
            self.last_records, self.last_stage = records, stage  # read by the robust recipe's selection split
        info = self._run_info(trainer) if test else {**self._run_info(trainer), "cache": self.cache_status()}
        document = self.result(records, stage, info)
        if not test and cached is None:
            packed, tensors = pack_records(records)
            self.cache_store(trainer, {"records": packed}, tensors)
        if test:
            summary = {f"test/{k}": float(v) for k, v in self.attack_summary(records).items()}
            document = {**document, "summary": plain(summary),
                        "asr": "fraction of target prompts whose image shows the concept (ImageMetric.success)"}
        self.last_summary = document["summary"]
        for key, value in self.last_summary.items():
            if value is not None:  # same value on every process: no collective needed
                pl_module.log(key, float(value), sync_dist=False)
        if trainer.is_global_zero:
            self._log_protocol(trainer, document["protocol"])
            if self.save_json:
                folder = f"test-{stage}" if test else stage
                self.last_path = self.write_json(document, run_dir(trainer) / "eval" / folder / f"{self.name}.json")

    # ------------------------------------------------------------------------------ rece test (attacks)
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._records, self._stage, self._cached = [], None, None
        self.device = pl_module.device
        if not self._prepared:
            self.prepare(pl_module)
            self._prepared = True

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def attack_summary(self, records: list[dict[str, Any]]) -> dict[str, float]:
        """Per attack: ``<attack>/asr`` (fraction of target images showing the concept, see :meth:`success`) and
        the metric's own summary as ``<attack>/<key>``."""
        summary: dict[str, float] = {}
        for attack in dict.fromkeys(str(r.get("attack") or "no_attack") for r in records):
            group = [r for r in records if str(r.get("attack") or "no_attack") == attack]
            outcomes = [self.success(r) for r in group]
            judged = [bool(o) for o in outcomes if o is not None]
            if judged:
                summary[f"{attack}/asr"] = mean(judged)
            summary.update({f"{attack}/{k}": v for k, v in self.summarize(group).items()})
        return summary

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish_epoch(trainer, pl_module, test=True)

    @staticmethod
    def _run_info(trainer: L.Trainer) -> dict[str, Any]:
        from rece_lightning.version import __version__

        return {
            "trainer_fn": str(trainer.state.fn.value) if trainer.state.fn is not None else None,
            "epoch": int(trainer.current_epoch),
            "global_step": int(trainer.global_step),
            "world_size": int(trainer.world_size),
            "rece_lightning_version": __version__,
        }

    def _log_protocol(self, trainer: L.Trainer, protocol: Mapping[str, Any]) -> None:
        experiment = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
        if experiment is not None and hasattr(experiment, "add_text"):
            rows = [(f"`{key}`", json.dumps(value, ensure_ascii=False)) for key, value in _flatten(protocol)]
            experiment.add_text(f"protocol/{self.name}", markdown_table(["field", "value"], rows),
                                global_step=trainer.global_step)
