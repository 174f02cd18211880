"""The ``rece`` command: a LightningCLI over :class:`RECEModule` and :class:`RECEDataModule`.

``rece fit`` erases (one closed-form stage per epoch: ``original``, ``uce``, ``rece-1`` …), ``rece validate``
evaluates, ``rece test`` red-teams, ``rece predict`` generates.

What the command adds to Lightning's CLI:

* **one-line errors**: bad input (a :class:`RECEError`, a usage error, an unreadable file or checkpoint, an
  unwritable folder, a misconfigured callback) is reported as one line ``rece: error: …`` naming the problem and the
  fix, with exit status 2 and no traceback (``--debug`` or ``RECE_DEBUG=1`` shows it). Paths are checked before
  anything is loaded, and a failed call leaves no empty run folder behind;
* **run folders, never overwritten**: ``rece fit`` writes a new ``<default_root_dir>/lightning_logs/version_N``,
  created exclusively (two runs started at once never share one). ``--ckpt_path`` *resumes* a run: the checkpoint's
  run identity (:mod:`rece_lightning.lightning.run_identity`) must match the command line's, and the resumed run writes into a
  new version folder of its own (the checkpoint's folder, its exports included, is never written to; the records
  of the stages before the resume are copied over and ``resumed_from.json`` names the checkpoint). ``rece
  validate/test/predict`` write ``lightning_logs/<subcommand>-<what was evaluated>`` (e.g.
  ``test-version_0-best-epoch=4``, ``validate-original``) and refuse a checkpoint that erased other concepts;
* **talk**: one line per finished stage (:class:`~rece_lightning.lightning.callbacks.StageReport`), the full metric names of
  ``rece validate``/``rece test`` results, and on Ctrl-C (exit 130) or SIGTERM (exit 143) one line naming the
  completed stages kept and the command that resumes the run;
* **quiet start-up** (:mod:`rece_lightning.quiet`) and **CPU threads** (``--threads N`` or ``RECE_NUM_THREADS``,
  see :mod:`rece_lightning.lightning.strategy`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterable, Iterator
from itertools import chain, count
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
from lightning.pytorch.utilities.exceptions import SIGTERMException  # noqa: E402

from rece_lightning.artefacts.checks import (  # noqa: E402
    check_base_model,
    check_checkpoint,
    check_config_files,
    check_model_sources,
    check_moved_names,
    latest_checkpoint,
    one_line,
    run_folder_of,
    shown_path,
)
from rece_lightning.artefacts.eval_cache import CACHE_ENV  # noqa: E402
from rece_lightning.errors import RECEError  # noqa: E402
from rece_lightning.files import atomic_path, check_writable_dir  # noqa: E402
from rece_lightning.lightning.cache_command import cache_command, strip_no_cache  # noqa: E402
from rece_lightning.lightning.callbacks.hparams import HParamsSummary  # noqa: E402
from rece_lightning.lightning.callbacks.report import StageReport  # noqa: E402
from rece_lightning.lightning.checkpoint import verify_hash  # noqa: E402
from rece_lightning.lightning.cli_text import (  # noqa: E402
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
from rece_lightning.lightning.data import RECEDataModule, check_prompts  # noqa: E402
from rece_lightning.lightning.module import RECEModule  # noqa: E402
from rece_lightning.lightning.run_identity import IDENTITY_KEY, RecordIdentity, check_same_run, run_identity  # noqa: E402
from rece_lightning.lightning.strategy import THREADS_ENV, configure_threads  # noqa: E402
from rece_lightning.lightning.strategy import register as register_strategy  # noqa: E402
from rece_lightning.recipes.paper import fit_epochs, read_preserve_csv  # noqa: E402

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
EXIT_TERMINATED = 143

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
        self._resume_from: Path | None = None  # the run folder of the checkpoint a fit resumes
        self._resume_stages: list[str] = []  # the stages that checkpoint holds
        self._fresh: list[Path] = []  # folders this call created (removed again when it fails with nothing to keep)
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
        identity = run_identity(cfg)
        ckpt = cfg.get("ckpt_path")
        if ckpt and str(ckpt) not in CKPT_KEYWORDS:
            checkpoint = check_checkpoint(ckpt)
            verify_hash(checkpoint, f"--ckpt_path {ckpt}")
            record = checkpoint.get(IDENTITY_KEY)
            check_same_run(record, identity, str(ckpt), subcommand)
            if subcommand == "fit":
                self._resume_from = run_folder_of(Path(ckpt))
                self._resume_stages = list(record.get("stages") or [])
        if subcommand == "fit":  # every checkpoint records the run it belongs to
            callbacks = self.trainer_defaults.get("callbacks") or []
            callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": [*callbacks, RecordIdentity(identity)]}
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
        root = root.absolute()
        logs = root / "lightning_logs"
        version = os.environ.get(VERSION_ENV) if os.environ.get("LOCAL_RANK", "0") != "0" else None
        if version is None:
            self._fresh = [p for p in (root, logs) if not p.exists()]
            logs.mkdir(parents=True, exist_ok=True)
            if subcommand == "fit":
                numbers = [int(m.group(1)) for p in logs.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))]
                version = _create_unique(logs, (f"version_{n}" for n in count(max(numbers, default=-1) + 1)))
            else:
                name = re.sub(r"[^\w.=+-]+", "_", f"{subcommand}-{self._evaluated()}")
                version = _create_unique(logs, chain([name], (f"{name}-{n}" for n in count(2))))
            self._fresh.append(logs / version)
            version = version.removeprefix("version_") if subcommand == "fit" else version
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
        fresh = list(self._fresh)
        if _first_process(self.trainer) and run is not None:
            if subcommand == "fit" and fn_kwargs["ckpt_path"] and str(fn_kwargs["ckpt_path"]) not in CKPT_KEYWORDS:
                self._start_resumed(run, Path(fn_kwargs["ckpt_path"]))
            else:
                print(f"rece: {subcommand} writes to {shown_path(run)}", flush=True)
        try:
            with _signals_to_lightning():
                results = fn(**fn_kwargs)
        except BaseException as err:
            interrupted = isinstance(err, (SystemExit, KeyboardInterrupt)) and (
                self.trainer.state.status == TrainerStatus.INTERRUPTED or isinstance(err, KeyboardInterrupt))
            if _first_process(self.trainer):
                signal_word = "terminated" if isinstance(err, SIGTERMException) else "interrupted"
                self._after_failure(subcommand, run, fresh, signal_word if interrupted else None)
            if interrupted:
                raise _Interrupted(EXIT_TERMINATED if isinstance(err, SIGTERMException) else EXIT_INTERRUPTED) from None
            raise
        finally:
            os.environ.pop(VERSION_ENV, None)
        if verbose and results and _first_process(self.trainer) and subcommand in ("validate", "test"):
            print_results(results, subcommand)

    def _start_resumed(self, run: Path, ckpt: Path) -> None:
        """Say what a resumed fit continues, and copy the records of the stages before the resume (``eval/<stage>``,
        e.g. the FID reference of ``original``) into its new run folder, with ``resumed_from.json``."""
        stages, source = self._resume_stages, self._resume_from
        if source is not None:
            for stage in stages:
                records = source / "eval" / stage
                if records.is_dir():
                    shutil.copytree(records, run / "eval" / stage, dirs_exist_ok=True)
        with atomic_path(run / "resumed_from.json") as tmp:
            tmp.write_text(json.dumps({"checkpoint": str(ckpt.absolute()), "run": str(source) if source else None,
                                       "stages": stages}, indent=1), encoding="utf-8")
        after = f" after {len(stages)} stages ({', '.join(stages)})" if stages else ""
        origin = shown_path(source) if source is not None else shown_path(ckpt)
        print(f"rece: fit resumes {origin}{after} from {ckpt.name}, writing to {shown_path(run)} (the kept stage is "
              "chosen over all stages, those before the resume included)", flush=True)

    def _run_dir(self) -> Path | None:
        logger = self.trainer.logger
        if logger is None:
            return None
        folder = getattr(logger, "log_dir", None)
        return Path(folder).absolute() if folder else None

    def _after_failure(self, subcommand: str, run: Path | None, fresh: list[Path], interrupted: str | None) -> None:
        """Remove what this call created when nothing in it can be reused; for fit, say how to resume.
        ``interrupted``: ``"interrupted"`` (Ctrl-C) or ``"terminated"`` (SIGTERM), ``None`` for an error."""
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
            what = interrupted or "stopped"
            print(f"rece: {what} after {epoch + 1} of {total} stages ({', '.join(done)}), kept in "
                  f"{shown_path(checkpoints)}; to resume: {resume_command(self.argv, ckpt)}", file=sys.stderr,
                  flush=True)
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
            print(f"rece: {interrupted} {what}".replace(" ;", ";"), file=sys.stderr, flush=True)


def _first_process(trainer) -> bool:
    """Global rank zero, also before the strategy has set the ranks (DDP processes started by the first one carry
    their ranks in the environment from the start)."""
    started = all(os.environ.get(name, "0") == "0" for name in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK"))
    return started and trainer.is_global_zero


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM ended the run (Lightning already shut it down); ``args[0]`` is the exit status."""


class _Terminated(BaseException):
    """SIGTERM arrived outside a trainer call (Lightning handles it, stage by stage, inside one)."""


_IN_TRAINER = False
"""Whether a trainer call is running (its SIGTERM handling is Lightning's, see :func:`_on_sigterm`)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    """Before and after a trainer call, SIGTERM ends ``rece`` like Ctrl-C (exit 143); during one, Lightning's own
    handler (which calls this one too) stops after the running step, keeping the completed stages."""
    if not _IN_TRAINER:
        raise _Terminated()


@contextlib.contextmanager
def _signals_to_lightning() -> Iterator[None]:
    global _IN_TRAINER
    _IN_TRAINER = True
    try:
        yield
    finally:
        _IN_TRAINER = False


def _create_unique(folder: Path, names: Iterable[str]) -> str:
    """Create the first of ``names`` that does not exist in ``folder``, exclusively (``os.mkdir``: two processes
    never get the same one), and return it."""
    for name in names:
        try:
            os.mkdir(folder / name)
        except FileExistsError:
            continue
        return name
    raise AssertionError("unreachable: the names are endless")


def _fail(message: str, debug: bool, code: int = EXIT_USAGE) -> None:
    if debug:
        traceback.print_exc()
    print(f"rece: error: {one_line(message)}", file=sys.stderr, flush=True)
    raise SystemExit(code) from None


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``rece`` console script (``args``: the command line without the program name)."""
    saved = {name: os.environ.get(name) for name in (DEBUG_ENV, THREADS_ENV, "OMP_NUM_THREADS", VERSION_ENV,
                                                     CACHE_ENV)}
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
    if argv[:1] == ["cache"]:  # rece cache info|clear: no LightningCLI
        raise SystemExit(cache_command(argv[1:]))
    argv = strip_no_cache(argv)  # --no-cache: RECE_CACHE=0 for this run and its DDP processes
    parser_args, debug, threads = own_options(argv)
    debug = debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if parser_args[:1] == ["report"]:  # not a Lightning subcommand: reads run folders, builds no model or trainer
        from rece_lightning.lightning.report import main as report

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
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        subcommand, rest = split_subcommand(parser_args)
        configure_threads()
        check_config_files(rest, subcommand)
        check_moved_names(rest, "the command line")
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
    except _Interrupted as err:
        raise SystemExit(err.args[0]) from None
    except (KeyboardInterrupt, _Terminated) as err:
        terminated = isinstance(err, _Terminated)
        print(f"rece: {'terminated' if terminated else 'interrupted'} before any stage ran; nothing to keep",
              file=sys.stderr, flush=True)
        raise SystemExit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
