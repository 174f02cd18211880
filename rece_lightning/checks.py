"""Checks made before any work: checkpoints that Lightning will be able to open, run folders, the models a call names
(readable files and writable folders are checked by :mod:`rece_lightning.files`).

Each raises :class:`~rece_lightning.errors.RECEError` with one line naming the problem and the fix; the ``rece``
command runs them on every path a call will read or write before the model is loaded.
"""

from __future__ import annotations

import importlib
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from rece_lightning.errors import RECEError

__all__ = ["check_checkpoint", "check_model_sources", "latest_checkpoint", "one_line", "shown_path", "run_folder_of"]


def one_line(text: str) -> str:
    """``text`` on one line (whitespace runs collapsed)."""
    return " ".join(str(text).split())


def check_checkpoint(path: str | Path) -> dict[str, Any]:
    """Open a checkpoint the way Lightning will (``torch.load(weights_only=True)``, memory-mapped) and return it.

    Raises:
        RECEError: the file is missing, a folder, unreadable, truncated, corrupted or not a Lightning checkpoint.
    """
    path = Path(path).expanduser()
    hint = "give a checkpoint written by rece fit (<run>/checkpoints/*.ckpt)"
    if not path.exists():
        raise RECEError(f"--ckpt_path {path} does not exist; {hint}")
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.ckpt")) or sorted(p.name for p in path.glob("checkpoints/*.ckpt"))
        more = f" (it holds {', '.join(found[:4])})" if found else ""
        raise RECEError(f"--ckpt_path {path} is a folder{more}; {hint}")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise RECEError(f"--ckpt_path {path} cannot be read ({err.strerror or err}); check its permissions") from err
    problem = _zip_problem(path)
    checkpoint = None
    if problem is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # torch raises RuntimeError, UnpicklingError, UnicodeDecodeError, OSError …
            problem = _load_error(err)
    if problem is not None:
        raise RECEError(
            f"--ckpt_path {path} cannot be read: {problem}; use another checkpoint of the run (e.g. the previous "
            "stage's) or run rece fit again"
        )
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise RECEError(
            f"--ckpt_path {path} is not a Lightning checkpoint (no state_dict); {hint}. "
            "Edited K/V weights (kv_weights.safetensors) go to --model.uce.weights instead"
        )
    return checkpoint


def _zip_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete zip archive (the container of every torch checkpoint), or ``None``."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != b"PK\x03\x04":
        return "it is not a torch checkpoint (no zip archive)"
    if not zipfile.is_zipfile(path):
        return "the file is truncated (its zip directory is missing)"
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as err:
        return f"the file is corrupted ({one_line(str(err))[:80]})"
    return None


def _load_error(err: BaseException) -> str:
    text = str(err)
    if isinstance(err, UnicodeDecodeError):
        return "the file is corrupted (a record name does not decode)"
    if "Weights only load failed" in text or "pickle" in text.lower():
        return "the file is corrupted (its pickled data does not decode)"
    first = text.splitlines()[0] if text else ""
    return f"the file is corrupted (its data does not decode: {type(err).__name__}: {first[:100]})"


def run_folder_of(ckpt: Path) -> Path | None:
    """The run folder (``…/lightning_logs/version_N``) that holds ``ckpt`` in its ``checkpoints/``, if any."""
    ckpt = ckpt.expanduser().absolute()
    run = ckpt.parent.parent
    if ckpt.parent.name == "checkpoints" and any((run / f).exists() for f in ("config.yaml", "hparams.yaml")):
        return run
    return None


def latest_checkpoint(folder: Path) -> tuple[Path, int] | None:
    """The readable checkpoint of ``folder`` with the highest epoch (the newest file among equals) and its epoch."""
    best: tuple[int, float, Path] | None = None
    for path in folder.glob("*.ckpt"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                epoch = int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("epoch", -1))
        except Exception:  # half-written or corrupted: not a resume point
            continue
        key = (epoch, path.stat().st_mtime, path)
        if best is None or key[:2] > best[:2]:
            best = key
    return None if best is None else (best[2], best[0])


def shown_path(path: Path) -> str:
    """``path`` relative to the working folder when it is below it, else absolute."""
    path = path.absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def check_model_sources(config: Any) -> None:
    """Resolve every model a ``rece`` call names before anything is loaded: ``model.pretrained`` when it is a Hugging
    Face Hub id (looked up in the user's cache, downloaded when online; see :mod:`rece_lightning.model_source`; a local
    folder is checked when the model loads, after its settings) and the models of the configured callbacks, through
    their class method ``check_sources(init_args)`` when they have one (the CLIP score's model, FID's Inception
    weights).

    Args:
        config: the parsed configuration of the subcommand (``model.pretrained``, ``trainer.callbacks``).

    Raises:
        RECEError: a model that is missing (offline, not on the Hub, not a pipeline folder …), in one line.
    """
    from rece_lightning.model_source import hub_id, resolve

    pretrained = config.get("model.pretrained")
    if pretrained is not None and hub_id(str(pretrained)) is not None:  # local folders are read when the model loads
        resolve(str(pretrained), "model.pretrained")
    for callback in config.get("trainer.callbacks") or []:
        class_path = _get(callback, "class_path")
        if not isinstance(class_path, str) or "." not in class_path:
            continue  # an instance (e.g. the CLI's own callbacks): nothing to resolve
        module, _, name = class_path.rpartition(".")
        hook = getattr(getattr(importlib.import_module(module), name, None), "check_sources", None)
        if callable(hook):
            init_args = _get(callback, "init_args")
            hook(dict(init_args.as_dict() if hasattr(init_args, "as_dict") else init_args or {}))


def _get(entry: Any, key: str) -> Any:
    """``entry[key]`` of a parsed callback entry (a jsonargparse Namespace or a dict), ``None`` when absent."""
    return entry.get(key) if hasattr(entry, "get") else getattr(entry, key, None)
