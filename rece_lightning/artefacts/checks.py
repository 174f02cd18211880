"""Checks made before any work: checkpoints that Lightning will be able to open, run folders, the models a call names
(readable files and writable folders are checked by :mod:`rece_lightning.files`).

Each raises :class:`~rece_lightning.errors.RECEError` with one line naming the problem and the fix; the ``rece``
command runs them on every path a call will read or write before the model is loaded.
"""

from __future__ import annotations

import importlib
import json
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml

from rece_lightning.errors import RECEError
from rece_lightning.files import check_readable_file

__all__ = ["EDITED_MARKER", "check_base_model", "check_checkpoint", "check_config_files", "check_model_sources",
           "latest_checkpoint", "one_line", "shown_path", "run_folder_of"]

EDITED_MARKER = "rece_edit.json"
"""Written into an exported pipeline folder (:func:`rece_lightning.artefacts.export.export_edit`): what was erased, at which
stage, from which base; :func:`check_base_model` refuses such a folder as the base of a run."""

SECTIONS = {"model": ("uce", "rece", "generation", "robust"), "data": (), "trainer": ()}
"""The sections of a config file that must be mappings when given (and their sub-sections)."""

MAX_EPOCHS_MESSAGE = (
    "trainer.max_epochs cannot be set: rece fit runs one epoch per stage, so the number of stages comes from "
    "model.rece.iterations (RECE iterations) and model.validate_original (the 'original' stage), "
    "e.g. --model.rece.iterations 2"
)


def one_line(text: str) -> str:
    """``text`` on one line (whitespace runs collapsed)."""
    return " ".join(str(text).split())


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise RECEError(f"{getattr(self, 'rece_path', 'the config')}, line {key_node.start_mark.line + 1}: "
                                f"the key {key!r} is given twice in one mapping; keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


MOVED_MODULES = {
    "rece_lightning.closed_form": "rece_lightning.maths.closed_form",
    "rece_lightning.cross_attention": "rece_lightning.maths.projections",
    "rece_lightning.edit_state": "rece_lightning.maths.edit_state",
    "rece_lightning.editor": "rece_lightning.maths.editor",
    "rece_lightning.spaces": "rece_lightning.maths.spaces",
    "rece_lightning.family": "rece_lightning.models.family",
    "rece_lightning.families": "rece_lightning.models.families",
    "rece_lightning.text": "rece_lightning.models.text",
    "rece_lightning.pipeline": "rece_lightning.models.pipeline",
    "rece_lightning.generation": "rece_lightning.models.generation",
    "rece_lightning.random_pipeline": "rece_lightning.models.random_pipeline",
    "rece_lightning.model_source": "rece_lightning.models.source",
    "rece_lightning.checks": "rece_lightning.artefacts.checks",
    "rece_lightning.integrity": "rece_lightning.artefacts.integrity",
    "rece_lightning.image_store": "rece_lightning.artefacts.image_store",
    "rece_lightning.prompts": "rece_lightning.artefacts.prompts",
    "rece_lightning.export": "rece_lightning.artefacts.export",
    "rece_lightning.eval_cache": "rece_lightning.artefacts.eval_cache",
    "rece_lightning.run_identity": "rece_lightning.lightning.run_identity",
    "rece_lightning.config": "rece_lightning.recipes.config",
    "rece_lightning.recipe": "rece_lightning.recipes.paper",
    "rece_lightning.selection": "rece_lightning.recipes.selection",
    "rece_lightning.robust": "rece_lightning.recipes.robust",
    "rece_lightning.robust_auto": "rece_lightning.recipes.robust.auto",
    "rece_lightning.judged_prompts": "rece_lightning.lightning.judged_prompts",
    "rece_lightning.robust_selection": "rece_lightning.lightning.selection_split",
    "rece_lightning.report": "rece_lightning.lightning.report",
    "rece_lightning.run_results": "rece_lightning.lightning.run_results",
    "rece_lightning.model_card": "rece_lightning.lightning.model_card",
    "rece_lightning.module": "rece_lightning.lightning.module",
    "rece_lightning.data": "rece_lightning.lightning.data",
    "rece_lightning.cli": "rece_lightning.lightning.cli",
    "rece_lightning.cli_text": "rece_lightning.lightning.cli_text",
    "rece_lightning.strategy": "rece_lightning.lightning.strategy",
    "rece_lightning.checkpoint": "rece_lightning.lightning.checkpoint",
    "rece_lightning.callbacks": "rece_lightning.lightning.callbacks",
    "rece_lightning.cache_command": "rece_lightning.lightning.cache_command",
}
"""Modules that moved when the package was grouped into layers (0.x → maths/, models/, artefacts/, recipes/,
lightning/): a class path that names an old module is answered with its new name."""


def check_moved_names(values: Any, where: str) -> None:
    """No string in ``values`` (a parsed config or a command line, nested lists and mappings included) names a class
    or module by a path that moved (:data:`MOVED_MODULES`).

    Raises:
        RECEError: naming the old path, the new one and where it was found.
    """
    if isinstance(values, dict):
        for value in values.values():
            check_moved_names(value, where)
    elif isinstance(values, list | tuple):
        for value in values:
            check_moved_names(value, where)
    elif isinstance(values, str):
        for old in re.findall(r"rece_lightning(?:\.\w+)+", values):
            for moved, new in MOVED_MODULES.items():
                if old == moved or old.startswith(moved + "."):
                    raise RECEError(f"{where} names {old}, which moved to {new + old[len(moved):]}; "
                                    "update the name")


def config_paths(argv: list[str]) -> list[str]:
    """The config files named on a command line (``--config F``, ``-c F``, ``--config=F``)."""
    paths = [b for a, b in zip(argv, argv[1:], strict=False) if a in ("--config", "-c")]
    return paths + [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]


def check_config_files(argv: list[str], subcommand: str = "fit") -> None:
    """Every ``--config`` file of ``argv`` is a readable UTF-8 YAML mapping without repeated keys, whose sections
    (``model``, ``model.uce`` …, ``data``, ``trainer``) are mappings, and which does not set ``trainer.max_epochs``
    (rece fit sets it from the stages).

    Raises:
        RECEError: naming the file (and line) and the fix.
    """
    for path in config_paths(argv):
        check_readable_file(path, "--config", f"give a YAML file (see rece {subcommand} --help)")
        raw = Path(path).expanduser().read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise RECEError(f"--config {path} is not UTF-8 text (byte 0x{raw[err.start]:02x}); save it as UTF-8") from err
        loader = _UniqueKeyLoader(text)
        loader.rece_path = path  # type: ignore[attr-defined]
        try:
            config = loader.get_single_data()
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f", line {mark.line + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            raise RECEError(f"--config {path}{where} is not valid YAML ({problem}); fix the file") from err
        finally:
            loader.dispose()
        if config is None:
            raise RECEError(f"--config {path} is empty; give a YAML mapping such as 'model: {{concepts: [nudity]}}'")
        if not isinstance(config, dict):
            raise RECEError(f"--config {path} is a {type(config).__name__}, not a mapping; the file holds sections "
                            "such as 'model:', 'data:' and 'trainer:'")
        for section, subsections in SECTIONS.items():
            value = config.get(section)
            if value is not None and not isinstance(value, dict):
                raise RECEError(f"--config {path}: '{section}' is {value!r}, not a mapping; write its settings "
                                f"indented below '{section}:'")
            for sub in subsections:
                inner = (value or {}).get(sub)
                if inner is not None and not isinstance(inner, dict):
                    raise RECEError(f"--config {path}: '{section}.{sub}' is {inner!r}, not a mapping; write its "
                                    f"settings indented below '{sub}:' (e.g. '{sub}: {{iterations: 2}}')")
        check_moved_names(config, f"--config {path}")
        trainer = config.get("trainer") or {}
        if trainer.get("max_epochs") is not None:
            raise RECEError(f"{path}: {MAX_EPOCHS_MESSAGE}")


def check_base_model(pretrained: str | None) -> None:
    """``model.pretrained`` is not a pipeline that ``rece fit`` already edited (an exported ``pipeline/`` folder):
    its recorded base would be wrong and a second erasure on top of the first is not the recipe.

    Raises:
        RECEError: naming what was erased from it and the base to give instead.
    """
    if not pretrained:
        return
    marker = Path(str(pretrained)).expanduser() / EDITED_MARKER
    if not marker.is_file():
        return
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        info = {}
    hparams = info.get("hparams") if isinstance(info, dict) else None
    hparams = hparams if isinstance(hparams, dict) else {}
    erased = f" ({hparams.get('concepts')} erased, stage {info.get('stage')!r})" if hparams else ""
    base = f" ({hparams['pretrained']})" if hparams.get("pretrained") else ""
    raise RECEError(f"model.pretrained {pretrained} is already an edited model{erased}, exported by rece fit; give "
                    f"the original base model{base}, and list every concept to erase in model.concepts")


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
    Face Hub id (looked up in the user's cache, downloaded when online; see :mod:`rece_lightning.models.source`; a local
    folder is checked when the model loads, after its settings) and the models of the configured callbacks, through
    their class method ``check_sources(init_args)`` when they have one (the CLIP score's model, FID's Inception
    weights).

    Args:
        config: the parsed configuration of the subcommand (``model.pretrained``, ``trainer.callbacks``).

    Raises:
        RECEError: a model that is missing (offline, not on the Hub, not a pipeline folder …), in one line.
    """
    from rece_lightning.models.source import hub_id, resolve

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
