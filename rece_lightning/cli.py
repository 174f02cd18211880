"""The ``rece`` command: a LightningCLI over :class:`RECEModule` and :class:`RECEDataModule`.

``rece fit`` erases (one closed-form stage per epoch: ``original``, ``uce``, ``rece-1`` …), ``rece validate``
evaluates, ``rece test`` red-teams, ``rece predict`` generates.

What the command adds to Lightning's CLI:

* **one-line errors**: bad input (a :class:`RECEError`, a usage error, an unreadable file or checkpoint, an
  unwritable folder, a misconfigured callback) is reported as one line ``rece: error: …`` naming the problem and the
  fix, with exit status 2 and no traceback (``--debug`` or ``RECE_DEBUG=1`` shows it). Paths are checked before
  anything is loaded, and a failed call leaves no empty run folder behind;
* **run folders**: ``rece fit`` writes ``<default_root_dir>/lightning_logs/version_N``; ``--ckpt_path`` pointing into
  such a folder *resumes* that run in place (same folder, same TensorBoard run). ``rece validate/test/predict`` write
  ``lightning_logs/<subcommand>-<what was evaluated>`` (e.g. ``test-version_0-best-epoch=4``, ``validate-original``);
* **talk**: one line per finished stage (:class:`~rece_lightning.callbacks.StageReport`), the full metric names of
  ``rece validate``/``rece test`` results, and on Ctrl-C the completed stages' checkpoints and the command that
  resumes the run;
* **quiet start-up** (:mod:`rece_lightning.quiet`) and **CPU threads** (``--threads N`` or ``RECE_NUM_THREADS``,
  see :mod:`rece_lightning.strategy`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

from rece_lightning import quiet

quiet.install()  # before diffusers/transformers/Lightning print anything

import torch  # noqa: E402
from jsonargparse import ArgumentError, DefaultHelpFormatter  # noqa: E402
from lightning.fabric.utilities.exceptions import MisconfigurationException  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from lightning.pytorch.trainer.states import TrainerStatus  # noqa: E402

from rece_lightning.callbacks.hparams import HParamsSummary  # noqa: E402
from rece_lightning.callbacks.report import StageReport  # noqa: E402
from rece_lightning.checkpoint import verify_hash  # noqa: E402
from rece_lightning.checks import (  # noqa: E402
    check_base_model,
    check_checkpoint,
    check_config_files,
    check_model_sources,
    latest_checkpoint,
    one_line,
    run_folder_of,
    shown_path,
)
from rece_lightning.cli_text import (  # noqa: E402
    DISK_FULL,
    SUBCOMMAND_HELP,
    disk_full_message,
    main_help,
    own_options,
    print_results,
    resume_command,
    split_subcommand,
    usage_message,
)
from rece_lightning.data import RECEDataModule, check_prompts  # noqa: E402
from rece_lightning.errors import RECEError  # noqa: E402
from rece_lightning.files import check_writable_dir  # noqa: E402
from rece_lightning.module import RECEModule  # noqa: E402
from rece_lightning.recipe import fit_epochs, read_preserve_csv  # noqa: E402
from rece_lightning.strategy import THREADS_ENV, configure_threads  # noqa: E402
from rece_lightning.strategy import register as register_strategy  # noqa: E402

DEBUG_ENV = "RECE_DEBUG"
"""Environment variable: ``1`` shows the traceback of errors (as ``--debug``)."""

VERSION_ENV = "RECE_RUN_VERSION"
"""Set by the first DDP process for the processes it starts, so that all of them name the same run folder."""

CKPT_KEYWORDS = ("last", "best", "hpc", "registry")
"""``--ckpt_path`` values that Lightning resolves itself."""

CKPT_HELP = {
    "fit": "resume a run from one of its checkpoints (<run>/checkpoints/*.ckpt); the run's settings must be the same",
    "validate": "evaluate the edit of this checkpoint of rece fit (restored onto model.pretrained)",
    "test": "red-team the edit of this checkpoint of rece fit (restored onto model.pretrained)",
    "predict": "generate with the edit of this checkpoint of rece fit (restored onto model.pretrained)",
}
"""Help of ``--ckpt_path`` per subcommand."""

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

TRAINER_DEFAULTS: dict[str, Any] = {
    "devices": 1,
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 1,
    "enable_model_summary": False,
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help with our descriptions kept as written (line breaks and indentation)."""


# ------------------------------------------------------------------------------------------------------- the CLI
class RECECLI(LightningCLI):
    """LightningCLI (``run=False``) for one ``rece`` subcommand, whose trainer runs exactly one epoch per edit stage.

    Built on LightningCLI's public extension points only: the subcommand is chosen by :func:`main` (one parser per
    subcommand, its help text through ``parser_kwargs``), ``--ckpt_path`` is an argument added in
    :meth:`add_arguments_to_parser`, paths are checked in :meth:`before_instantiate_classes`, the run folder is named
    in :meth:`instantiate_trainer`, and :meth:`run_subcommand` calls the trainer.

    ``--ckpt_path`` restores the edited K/V weights and edit state onto the model that the config and command line
    describe; the user's config is authoritative (Lightning's own subcommands would overwrite the model section with
    the hyper-parameters saved in the checkpoint, silently dropping e.g. the attacks of
    ``rece test --config attack.yaml``), and a checkpoint that does not fit the model is refused when it is loaded.

    Args:
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.
        kwargs: :class:`~lightning.pytorch.cli.LightningCLI`'s arguments (``run`` is always ``False``).

    Attributes:
        argv: the command line as the user gave it (for the resume command printed on Ctrl-C).
    """

    argv: list[str] | None = None

    def __init__(self, subcommand: str, **kwargs: Any) -> None:
        self.command = subcommand
        self._resume_run: Path | None = None
        super().__init__(RECEModule, RECEDataModule, run=False, **kwargs)

    # --------------------------------------------------------------------------------------------- parser
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """``--ckpt_path`` (and ``--verbose`` for validate/test), and ``trainer.max_epochs`` from the stages."""
        parser.add_argument("--ckpt_path", type=str | None, default=None, help=CKPT_HELP[self.command])
        if self.command in ("validate", "test"):
            parser.add_argument("--verbose", type=bool, default=True, help="print the results")
        parser.link_arguments(  # one epoch per stage of the recipe's stage list (recipe.stage_names)
            ("model.recipe", "model.rece.iterations", "model.robust.iterations", "model.validate_original"),
            "trainer.max_epochs", compute_fn=fit_epochs,
        )

    # --------------------------------------------------------------------------------------- start-up checks
    def before_instantiate_classes(self) -> None:
        """Check every path the run will read or write before anything is loaded (one clear error, no output)."""
        subcommand, cfg = self.command, self.config
        check_base_model(cfg.get("model.pretrained"))
        ckpt = cfg.get("ckpt_path")
        if ckpt and str(ckpt) not in CKPT_KEYWORDS:
            verify_hash(check_checkpoint(ckpt), f"--ckpt_path {ckpt}")
            if subcommand == "fit":
                self._resume_run = run_folder_of(Path(ckpt))
        if self._resume_run is not None:
            check_writable_dir(self._resume_run, "the run folder of --ckpt_path")
        else:
            root = check_writable_dir(cfg.get("trainer.default_root_dir") or os.getcwd(), "trainer.default_root_dir")
            if (root / "lightning_logs").exists():
                check_writable_dir(root / "lightning_logs", "the run folders' parent")
        image_dir = cfg.get("model.generation.image_dir")
        if image_dir:
            check_writable_dir(image_dir, "model.generation.image_dir")
        # model.uce.weights is checked by UCEConfig itself (config.py), before any model is loaded
        preserve_csv = cfg.get("model.preserve_csv")
        if preserve_csv:
            read_preserve_csv(preserve_csv, cfg.get("model.preserve_csv_column") or "artist")
        data = cfg.get("data") or {}
        check_prompts(
            subcommand,
            {kind: data.get(f"{kind}_prompts") for kind in ("val", "test", "predict")},
            data.get("limit"),
            data.get("kinds"),
            data.get("batch_size"),
        )
        check_model_sources(cfg)  # Hub ids resolved (downloaded when online) before anything loads

    # ------------------------------------------------------------------------------------------ run folder
    def instantiate_trainer(self, **kwargs: Any):
        """The trainer, with rece's run folder naming (see the module docstring) and no ``hp_metric``."""
        trainer = super().instantiate_trainer(**kwargs)
        if self.config.get("trainer.logger") in (None, True) and isinstance(trainer.logger, TensorBoardLogger):
            trainer.logger = self._logger(Path(trainer.default_root_dir))
        return trainer

    def _logger(self, root: Path) -> TensorBoardLogger:
        subcommand = self.command
        resume = self._resume_run
        if resume is not None:
            number = re.fullmatch(r"version_(\d+)", resume.name)
            return TensorBoardLogger(save_dir=resume.parent.parent, name=resume.parent.name,
                                     version=int(number.group(1)) if number else resume.name, default_hp_metric=False)
        logs = root / "lightning_logs"
        version = os.environ.get(VERSION_ENV) if os.environ.get("LOCAL_RANK", "0") != "0" else None
        if version is None:
            if subcommand == "fit":
                numbers = [int(m.group(1)) for p in (logs.iterdir() if logs.is_dir() else [])
                           if (m := re.fullmatch(r"version_(\d+)", p.name)) and p.is_dir()]
                version = str(max(numbers, default=-1) + 1)
            else:
                version = _unique(logs, f"{subcommand}-{self._evaluated()}")
            os.environ[VERSION_ENV] = version  # for DDP processes started by this one
        # an int version N names the folder version_N (Lightning's convention); a string is the folder name
        named: int | str = int(version) if version.isdigit() else version
        return TensorBoardLogger(save_dir=root, name="lightning_logs", version=named, default_hp_metric=False)

    def _evaluated(self) -> str:
        """What a validate/test/predict call evaluates: ``original`` or the checkpoint (with its run folder)."""
        ckpt = self.config.get("ckpt_path")
        if not ckpt:
            return "original"
        if str(ckpt) in CKPT_KEYWORDS:
            return str(ckpt)
        path = Path(ckpt)
        run = run_folder_of(path)
        return f"{run.name}-{path.stem}" if run is not None else path.stem

    # ---------------------------------------------------------------------------------------------- running
    def run_subcommand(self) -> None:
        """Call the trainer; print results with full metric names; on failure clean up and say how to resume."""
        subcommand = self.command
        fn = getattr(self.trainer, subcommand)
        fn_kwargs: dict[str, Any] = {"model": self.model, "datamodule": self.datamodule,
                                     "ckpt_path": self.config.get("ckpt_path")}
        verbose = bool(self.config.get("verbose", True))
        if subcommand in ("validate", "test"):
            fn_kwargs["verbose"] = False  # Lightning's table truncates metric names; see print_results
        run = self._run_dir()
        root = Path(self.trainer.default_root_dir).absolute()
        fresh = [p for p in (root, root / "lightning_logs", run) if p is not None and not p.exists()]
        if _first_process(self.trainer) and run is not None:
            verb = "resumes" if self._resume_run is not None else "writes to"
            print(f"rece: {subcommand} {verb} {shown_path(run)}", flush=True)
        try:
            results = fn(**fn_kwargs)
        except BaseException as err:
            interrupted = isinstance(err, (SystemExit, KeyboardInterrupt)) and (
                self.trainer.state.status == TrainerStatus.INTERRUPTED or isinstance(err, KeyboardInterrupt))
            if _first_process(self.trainer):
                self._after_failure(subcommand, run, fresh, interrupted)
            if interrupted:
                raise _Interrupted() from None
            raise
        finally:
            os.environ.pop(VERSION_ENV, None)
        if verbose and results and _first_process(self.trainer) and subcommand in ("validate", "test"):
            print_results(results, subcommand)

    def _run_dir(self) -> Path | None:
        logger = self.trainer.logger
        if logger is None:
            return None
        folder = getattr(logger, "log_dir", None)
        return Path(folder).absolute() if folder else None

    def _after_failure(self, subcommand: str, run: Path | None, fresh: list[Path], interrupted: bool) -> None:
        """Remove what this call created when nothing in it can be reused; for fit, say how to resume."""
        checkpoints = run / "checkpoints" if run is not None else None
        latest = latest_checkpoint(checkpoints) if checkpoints is not None and checkpoints.is_dir() else None
        given = self.config.get("ckpt_path")
        if latest is not None and given and not interrupted and Path(given).absolute() == latest[0].absolute():
            latest = None  # nothing new since the checkpoint this call started from: no resume point to offer
        if subcommand == "fit" and latest is not None:
            ckpt, epoch = latest
            stages = list(getattr(self.model, "stages", []))
            done = stages[: epoch + 1] if stages else [f"epoch {i}" for i in range(epoch + 1)]
            total = len(stages) if stages else "?"
            what = "interrupted" if interrupted else "stopped"
            print(f"rece: {what} after {epoch + 1} of {total} stages ({', '.join(done)}); "
                  f"their checkpoints are in {shown_path(checkpoints)}", file=sys.stderr)
            print(f"rece: to resume: {resume_command(self.argv, ckpt)}", file=sys.stderr, flush=True)
            return
        for path in reversed(fresh):  # run folder first, then lightning_logs and the root if they are now empty
            if not path.exists():
                continue
            if path == run:
                shutil.rmtree(path, ignore_errors=True)
            elif not any(path.iterdir()):
                path.rmdir()
        if interrupted:
            what = "before any stage was saved; nothing to resume" if subcommand == "fit" else "; nothing was kept"
            print(f"rece: interrupted {what}".replace(" ;", ";"), file=sys.stderr, flush=True)


def _first_process(trainer) -> bool:
    """Global rank zero, also before the strategy has set the ranks (DDP processes started by the first one carry
    their ranks in the environment from the start)."""
    started = all(os.environ.get(name, "0") == "0" for name in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK"))
    return started and trainer.is_global_zero


class _Interrupted(Exception):
    """Ctrl-C ended the run (Lightning already shut it down)."""


def _unique(folder: Path, name: str) -> str:
    """``name``, or ``name-2``, ``name-3`` … when ``folder/name`` exists."""
    name = re.sub(r"[^\w.=+-]+", "_", name)
    candidate, n = name, 1
    while (folder / candidate).exists():
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def _fail(message: str, debug: bool, code: int = EXIT_USAGE) -> None:
    if debug:
        traceback.print_exc()
    print(f"rece: error: {one_line(message)}", file=sys.stderr, flush=True)
    raise SystemExit(code) from None


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``rece`` console script (``args``: the command line without the program name)."""
    saved = {name: os.environ.get(name) for name in (DEBUG_ENV, THREADS_ENV, "OMP_NUM_THREADS", VERSION_ENV)}
    threads = torch.get_num_threads()
    try:
        _main(args)
    finally:  # called from Python (tests, notebooks): leave the environment and torch's threads as they were
        torch.set_num_threads(threads)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _main(args: list[str] | None) -> None:
    quiet.install()
    argv = list(sys.argv[1:] if args is None else args)
    parser_args, debug, threads = own_options(argv)
    debug = debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if parser_args[:1] == ["report"]:  # not a Lightning subcommand: reads run folders, builds no model or trainer
        from rece_lightning.report import main as report

        try:
            return report(parser_args[1:])
        except RECEError as err:
            _fail(str(err), debug)
    if debug:
        os.environ[DEBUG_ENV] = "1"  # DDP processes re-run the command line; they inherit the environment
    if threads is not None:
        os.environ[THREADS_ENV] = threads
    if parser_args[:1] in (["-h"], ["--help"]):
        print(main_help())
        raise SystemExit(0)
    # the arguments are always passed explicitly (--debug and --threads removed), so Lightning's warning about
    # args given next to sys.argv does not apply
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended to run from within")
    register_strategy("ddp", override=True)  # fit shards validation; no gradient wrapper (see strategy.py)
    RECECLI.argv = argv
    if not sys.stderr.isatty():
        quiet.disable_loading_bars()  # tqdm bars of model loading are junk lines in logs
    # StageReport shows each stage's progress (a bar on a terminal, lines when piped) instead of Lightning's bar
    defaults = {**TRAINER_DEFAULTS, "enable_progress_bar": False, "callbacks": [StageReport(), HParamsSummary()]}
    try:
        subcommand, rest = split_subcommand(parser_args)
        configure_threads()
        check_config_files(rest)
        cli = RECECLI(
            subcommand,
            trainer_defaults=defaults,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"prog": f"rece {subcommand}", "description": SUBCOMMAND_HELP[subcommand][1],
                           "formatter_class": _HelpFormatter, "exit_on_error": False},
            args=rest,
        )
        cli.run_subcommand()
    except ArgumentError as err:
        _fail(usage_message(str(err), parser_args), debug)
    except RECEError as err:
        _fail(str(err), debug)
    except MisconfigurationException as err:
        _fail(str(err), debug)
    except OSError as err:
        if err.errno in DISK_FULL:
            _fail(disk_full_message(err), debug)
        if err.filename is None:
            raise
        _fail(f"{err.filename}: {err.strerror or err}; check the path and its permissions", debug)
    except RuntimeError as err:
        if "PytorchStreamWriter failed writing" not in str(err):
            raise
        _fail(disk_full_message(err), debug)
    except (_Interrupted, KeyboardInterrupt):
        if isinstance(sys.exc_info()[1], KeyboardInterrupt):
            print("rece: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None


if __name__ == "__main__":
    main()
