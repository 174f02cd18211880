"""The run's knobs and its kept stage's metrics in TensorBoard's HParams tab, so the runs of a sweep compare.

At the end of ``rece fit`` (global rank zero) the recipe's knobs (:data:`~rece_lightning.lightning.run_results.RECIPE_KNOBS`,
flattened: ``uce/lamb``, ``rece/gamma``, ``generation/num_inference_steps`` …, plus ``kept_stage``) are written with the metrics
of the kept stage, read back from ``eval/<stage>/*.json``, as ``kept/<metric>`` (e.g. ``kept/val/concept_rate``)
and ``kept/stage_index`` (its position in the stage list), through the logger's public
``log_hyperparams(params, metrics)``. The ``rece`` command adds this callback by default.
"""

from __future__ import annotations

from typing import Any

import lightning as L

from rece_lightning.lightning.callbacks.run import run_dir
from rece_lightning.lightning.run_results import kept_stage, recipe_knobs, stage_metrics

__all__ = ["HParamsSummary"]


class HParamsSummary(L.Callback):
    """Log ``hparams`` + the kept stage's metrics once ``rece fit`` ends (see the module docstring).

    Args:
        prefix: name prefix of the logged metrics (``kept/val/concept_rate``), so that they do not add a point to
            the stages' own curves.
    """

    def __init__(self, prefix: str = "kept") -> None:
        self.prefix = prefix.rstrip("/")
        self.logged: tuple[dict[str, Any], dict[str, float]] | None = None

    def summary(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[dict[str, Any], dict[str, float]]:
        """``(params, metrics)`` of the run."""
        stages = list(getattr(pl_module, "stages", []) or [])
        kept = kept_stage(pl_module)
        knobs = recipe_knobs(dict(pl_module.hparams))
        params: dict[str, Any] = {"kept_stage": kept or "none", **{k.replace(".", "/"): v for k, v in knobs.items()}}
        metrics: dict[str, float] = {}
        if kept is not None:
            found = stage_metrics(run_dir(trainer), [kept]).get(kept, {})
            metrics = {f"{self.prefix}/{name}": value for name, value in found.items()}
            if kept in stages:
                metrics[f"{self.prefix}/stage_index"] = float(stages.index(kept))
        return params, metrics

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.logger is None:
            return
        params, metrics = self.summary(trainer, pl_module)
        if metrics:
            trainer.logger.log_hyperparams(params, metrics)
            trainer.logger.save()
        self.logged = (params, metrics)
