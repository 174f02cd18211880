"""Test helper callbacks: a real Ctrl-C (SIGINT) between two stages of ``rece fit`` when asked for, and a failure.

Added to a run through a config file (``trainer.callbacks+``); it does nothing unless the environment variable
``RECE_TEST_SIGINT_AT_EPOCH`` names an epoch, so the command that resumes the run can be the same command line.
"""

from __future__ import annotations

import os
import signal

import lightning as L

ENV = "RECE_TEST_SIGINT_AT_EPOCH"
TERM_ENV = "RECE_TEST_SIGTERM_AT_EPOCH"


def default_sigint() -> None:
    """``preexec_fn`` of a ``rece`` subprocess that receives a Ctrl-C: SIGINT handled as in a terminal, even when the
    test runner itself was started in the background (where the shell leaves SIGINT ignored, and children inherit
    that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class SigintAtEpoch(L.Callback):
    """Deliver SIGINT to this process when the epoch named by ``RECE_TEST_SIGINT_AT_EPOCH`` starts, i.e. after the
    previous stage was validated and checkpointed and before this stage does any work."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        target = os.environ.get(ENV)
        if target is not None and trainer.current_epoch == int(target):
            signal.raise_signal(signal.SIGINT)  # handled like a Ctrl-C typed in the terminal


class FailDuringValidation(L.Callback):
    """Raise an unexpected error (a bug, not bad input) in the first validation batch."""

    def on_validation_batch_end(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in a callback")


class SigtermAtEpoch(L.Callback):
    """Deliver SIGTERM to this process when the epoch named by ``RECE_TEST_SIGTERM_AT_EPOCH`` starts (as a job
    scheduler ending the job)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        target = os.environ.get(TERM_ENV)
        if target is not None and trainer.current_epoch == int(target):
            signal.raise_signal(signal.SIGTERM)
