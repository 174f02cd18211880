"""What ``rece`` says while it runs: the progress of each stage and one line per finished stage.

Progress names the stage and counts images (``rece-2: 640/1,280 images, 1 min 10 s left``): on a terminal as a bar
redrawn in place, when the output is piped (logs, CI, ``nohup``) as a line when a stage's edit or evaluation starts and
then at least every ``every`` seconds (30 by default, ``RECE_PROGRESS_EVERY`` in the environment), also while one long
batch runs. When a ``rece fit`` stage ends, one line gives its main metrics and the time it took, e.g.::

    rece: stage 2/5 uce done in 31.4 s: val/concept_rate 0.7292, val/fd_testbed_classifier 30.93, val/preservation 0.9905

Global rank zero prints, to standard output (:mod:`rece_lightning.lightning.callbacks.console`). The ``rece`` command adds
this callback by default and turns Lightning's own progress bar (``Epoch 0/3``) off.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import lightning as L

from rece_lightning.lightning.callbacks.console import is_terminal, say, show_status

__all__ = ["EVERY_ENV", "StageReport", "format_duration", "format_metrics", "main_metrics"]

EVERY_ENV = "RECE_PROGRESS_EVERY"
"""Environment variable: seconds between progress lines when the output is not a terminal (default 30)."""


def main_metrics(metrics: Mapping[str, Any], prefixes: tuple[str, ...] = ("val/",)) -> dict[str, float]:
    """The headline numbers among logged metrics: keys with one level below a prefix (``val/concept_rate``, not the
    per-kind ``val/concept_rate/implicit`` or per-class ``val/nudenet_images/<CLASS>``), sorted by name."""
    out: dict[str, float] = {}
    for key in sorted(metrics):
        if any(key.startswith(p) and "/" not in key[len(p):] for p in prefixes):
            try:
                out[key] = float(metrics[key])
            except (TypeError, ValueError):
                continue
    return out


def format_metrics(metrics: Mapping[str, float]) -> str:
    """``name value`` pairs with 4 significant digits, comma separated."""
    return ", ".join(f"{k} {v:.4g}" if math.isfinite(v) else f"{k} {v}" for k, v in metrics.items())


def format_duration(seconds: float) -> str:
    """``45 s``, ``1 min 10 s``, ``2 h 5 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _bar(fraction: float, width: int = 24) -> str:
    full = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "█" * full + "·" * (width - full) + "]"


def _dataset_size(loaders: Any) -> int | None:
    """Rows in all of a loop's dataloaders (the whole set, not one DDP shard), if known."""
    if loaders is None:
        return None
    loaders = list(loaders) if isinstance(loaders, list | tuple) else [loaders]
    try:
        return sum(len(loader.dataset) for loader in loaders)
    except (TypeError, AttributeError):
        return None


class StageReport(L.Callback):
    """Progress of every stage and one line per finished ``rece fit`` stage (see the module docstring).

    Args:
        prefixes: metric name prefixes whose top-level names are shown in the stage line.
        every: seconds between progress lines when the output is not a terminal (``None``: ``RECE_PROGRESS_EVERY``
            or 30).
        progress: show progress at all (the stage lines are always printed).
    """

    reads_images = False  # its batch hook counts rows: a cached evaluation still generates nothing (callbacks.cached)

    def __init__(self, prefixes: tuple[str, ...] | list[str] = ("val/",), every: float | None = None,
                 progress: bool = True) -> None:
        self.prefixes = tuple(prefixes)
        self.every = float(every if every is not None else os.environ.get(EVERY_ENV) or 30.0)
        self.progress = progress
        self._started: float | None = None
        self._lock = threading.Lock()
        self._task: dict[str, Any] | None = None  # what is running: stage, what, done, total, since
        self._said = 0.0  # when the last progress line was printed (piped output)
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ the status
    def status(self) -> str | None:
        """The progress line of the moment (``None`` when nothing runs)."""
        with self._lock:
            task = None if self._task is None else dict(self._task)
        if task is None:
            return None
        elapsed = time.perf_counter() - task["since"]
        if task["total"] is None:
            return f"{task['stage']}: {task['what']}, {format_duration(elapsed)} so far"
        done, total = task["done"], task["total"]
        if 0 < done < total:
            left = f", {format_duration(elapsed * (total - done) / done)} left"
        else:
            left = f", {format_duration(elapsed)} so far" if done < total else ""
        count = f"{done:,}/{total:,} {task['what']}{left}"
        if is_terminal():
            return f"{task['stage']} {_bar(done / total if total else 1.0)} {count}"
        return f"{task['stage']}: {count}"

    def _show(self, force: bool = False) -> None:
        now = time.perf_counter()
        if is_terminal() or force or now - self._said >= self.every:
            self._said = now
            show_status(self.status())

    def _tick(self) -> None:
        while not self._stop.wait(0.5 if is_terminal() else min(1.0, self.every / 4)):
            if self._task is not None:
                self._show()

    def _begin(self, trainer: L.Trainer, stage: str, what: str, total: int | None) -> None:
        if not (self.progress and trainer.is_global_zero) or trainer.sanity_checking:
            return
        with self._lock:
            self._task = {"stage": stage, "what": what, "done": 0, "total": total, "since": time.perf_counter()}
        self._show(force=True)
        if self._ticker is None or not self._ticker.is_alive():
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, name="rece-progress", daemon=True)
            self._ticker.start()

    def _advance(self, trainer: L.Trainer, batch: Any) -> None:
        if self._task is None or not trainer.is_global_zero:
            return
        rows = len(batch["prompt"]) if isinstance(batch, Mapping) and "prompt" in batch else 1
        with self._lock:
            if self._task is not None and self._task["total"] is not None:
                done = self._task["done"] + rows * max(trainer.world_size, 1)
                self._task["done"] = min(done, self._task["total"])
        self._show()

    def _end(self) -> None:
        with self._lock:
            running, self._task = self._task is not None, None
        if running and is_terminal():
            show_status(None)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._end()
        self._stop.set()

    @staticmethod
    def _stage(trainer: L.Trainer, pl_module: L.LightningModule, upcoming: bool = False) -> str:
        stages = list(getattr(pl_module, "stages", []) or [])
        if upcoming and trainer.current_epoch < len(stages):
            return stages[trainer.current_epoch]
        return str(getattr(pl_module, "stage", None) or f"epoch {trainer.current_epoch}")

    # ---------------------------------------------------------------------------------------------- fit
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        stage = self._stage(trainer, pl_module, upcoming=True)
        if stage != "original":
            self._begin(trainer, stage, "erasing", None)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._end()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end()
        if not trainer.is_global_zero or self._started is None:
            return
        elapsed = time.perf_counter() - self._started
        stage = getattr(pl_module, "stage", None) or f"epoch {trainer.current_epoch}"
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        metrics = format_metrics(main_metrics(trainer.callback_metrics, self.prefixes))
        line = f"rece: stage {trainer.current_epoch + 1}/{total} {stage} done in {elapsed:.1f} s"
        say(line + (f": {metrics}" if metrics else ""))

    # ------------------------------------------------------------------------------- generating loops
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin(trainer, self._stage(trainer, pl_module), "images", _dataset_size(trainer.val_dataloaders))

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._advance(trainer, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end()

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stage = f"{self._stage(trainer, pl_module)} red-teaming"
        self._begin(trainer, stage, "prompts", _dataset_size(trainer.test_dataloaders))

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._advance(trainer, batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end()

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin(trainer, self._stage(trainer, pl_module), "images", _dataset_size(trainer.predict_dataloaders))

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._advance(trainer, batch)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end()
