"""Where a run writes, and warnings shown once: helpers every callback uses."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["run_dir", "warn"]


def run_dir(trainer: L.Trainer) -> Path:
    """The run's log folder, read without a collective call (``trainer.log_dir`` broadcasts under DDP, which
    deadlocks when only rank zero asks): rank zero's own logger knows the folder it writes to."""
    logger = trainer.logger
    folder = getattr(logger, "log_dir", None) if logger is not None else None
    return Path(folder or trainer.default_root_dir)


def warn(message: str) -> None:
    """A warning shown by global rank zero only."""
    rank_zero_warn(message)
