"""The ``rece`` command: a LightningCLI over :class:`RECEModule` and :class:`RECEDataModule`.

``rece fit`` erases (one closed-form edit per epoch), ``rece validate`` evaluates, ``rece predict`` generates.
Bad input is reported as one line naming the problem and the fix, with exit status 2.
"""

from __future__ import annotations

import sys
import warnings

from lightning.pytorch.cli import LightningCLI

from rece_lightning.data import RECEDataModule
from rece_lightning.errors import RECEError
from rece_lightning.module import RECEModule
from rece_lightning.strategy import register as register_strategy


def _epochs(iterations: int, validate_original: bool) -> int:
    """One epoch per stage: (original) + UCE + RECE iterations."""
    return int(validate_original) + 1 + int(iterations)


class RECECLI(LightningCLI):
    """LightningCLI whose trainer runs exactly one epoch per edit stage.

    ``--ckpt_path`` restores the edited K/V weights and edit state onto the model that the config and command line
    describe. Lightning's CLI would also overwrite the model section with the hyper-parameters saved in the
    checkpoint, silently dropping e.g. the attacks of ``rece test --config attack.yaml`` (the erasure run had none)
    or a ``--model.torch_dtype float16``; here the user's config is authoritative, and a checkpoint that does not fit
    the model is refused when it is loaded.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments(
            ("model.rece.iterations", "model.validate_original"), "trainer.max_epochs", compute_fn=_epochs
        )

    def _parse_ckpt_path(self) -> None:
        """Keep the config's model section (see the class docstring) instead of the checkpoint's hyper-parameters."""


TRAINER_DEFAULTS = {
    "devices": 1,
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 1,
    "enable_model_summary": False,
}


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``rece`` console script."""
    # the frozen diffusion model is in eval mode on purpose, and closed-form steps use no data workers
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    register_strategy("ddp", override=True)  # fit shards validation; no gradient wrapper (see strategy.py)
    try:
        RECECLI(
            RECEModule,
            RECEDataModule,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            args=args,
        )
    except RECEError as err:
        print(f"rece: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
