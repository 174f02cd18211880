"""One line per finished stage of ``rece fit``: the stage, its main metrics and the time it took.

Printed by global rank zero to standard output (flushed, so it also shows in logs, CI and ``nohup`` output), e.g.::

    rece: stage 2/5 uce done in 31.4 s: val/concept_rate 0.7292, val/fd_testbed_classifier 30.93, val/preservation 0.9905

The ``rece`` command adds this callback by default.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import lightning as L


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


class StageReport(L.Callback):
    """Print one line when each ``rece fit`` stage (a training epoch: edit + validation) ends.

    Args:
        prefixes: metric name prefixes whose top-level names are shown.
    """

    def __init__(self, prefixes: tuple[str, ...] | list[str] = ("val/",)) -> None:
        self.prefixes = tuple(prefixes)
        self._started: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self._started is None:
            return
        elapsed = time.perf_counter() - self._started
        stage = getattr(pl_module, "stage", None) or f"epoch {trainer.current_epoch}"
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        metrics = format_metrics(main_metrics(trainer.callback_metrics, self.prefixes))
        line = f"rece: stage {trainer.current_epoch + 1}/{total} {stage} done in {elapsed:.1f} s"
        print(line + (f": {metrics}" if metrics else ""), flush=True)
