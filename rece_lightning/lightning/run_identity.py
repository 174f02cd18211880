"""What makes a run the run it is, recorded in each of its checkpoints so that ``--ckpt_path`` never mixes two runs.

A run's identity is everything that decides its stages' edits and the numbers recorded for them: the base model
(``model.pretrained`` and the fingerprint of its original text-reading weights), the concepts and anchors, the recipe
and its knobs (``model.uce``, ``model.rece``, ``model.robust``, the technique, the preserve CSV's SHA-256 …), the
validation prompts' SHA-256 (and ``data.limit``/``data.kinds``), the generation settings and the keep-best rule. The
number of iterations is not part of it: resuming a run with more iterations extends it, its earlier stages are the
same. Batch size, threads, callbacks and output folders are not part of it either (they change no edit and no
per-row result).

:class:`RecordIdentity` writes ``{"identity": …, "stages": [the stages done]}`` under :data:`IDENTITY_KEY` of every
checkpoint (its own key, beside the edit of :mod:`rece_lightning.lightning.checkpoint`); :func:`check_same_run` compares a
checkpoint's record with the identity of the command line before any model is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import lightning as L

from rece_lightning.artefacts.integrity import base_fingerprint
from rece_lightning.errors import RECEError
from rece_lightning.files import file_sha256, tensor_sha256

__all__ = ["IDENTITY_KEY", "RecordIdentity", "check_same_run", "identity_differences", "run_identity"]

IDENTITY_KEY = "rece_run"
"""The checkpoint key of the run's record (:class:`RecordIdentity`)."""

MODEL_KEYS = ("pretrained", "torch_dtype", "max_sequence_length", "concepts", "anchor", "recipe", "technique",
              "with_to_k", "uce", "rece", "robust", "preserve_csv_column", "validate_original", "keep_best",
              "keep_best_mode", "generation")
"""The ``model.*`` settings that are part of a run's identity (iterations and image folders removed below)."""

BASE_KEY = "model.base_fingerprint.sha256"
"""SHA-256 of the base model's fingerprint (:func:`~rece_lightning.artefacts.integrity.base_fingerprint`), added when a
checkpoint is written; the fingerprint itself is compared, with its rounding tolerance, when the edit is loaded."""

NOT_IDENTITY = {"model.rece.iterations", "model.robust.iterations", "model.generation.image_dir"}
"""Settings that change no stage's edit or result: a resumed run may change them."""

FILES = {"model.preserve_csv", "model.uce.weights", "model.robust.judged_prompts"}
"""Settings naming a file: the identity holds the file's SHA-256 as well as its name."""


def _plain(value: Any) -> Any:
    """``value`` as plain data (jsonargparse namespaces and dataclasses as dicts)."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    elif is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _file_hash(path: Any) -> str | None:
    """SHA-256 of a file setting; ``None`` when unset or not a regular file (the setting's own check reports it)."""
    if not path:
        return None
    file = Path(str(path)).expanduser()
    return file_sha256(file) if file.is_file() else None


def run_identity(config: Any) -> dict[str, Any]:
    """The identity of the run a (parsed, not instantiated) ``rece fit`` config describes, as flat ``{setting:
    value}`` (files also by their SHA-256, e.g. ``data.val_prompts.sha256``)."""
    from rece_lightning.artefacts.prompts import resolve_prompts

    model = _plain(config.get("model")) or {}
    data = _plain(config.get("data")) or {}
    flat = _flatten({"model": {k: model.get(k) for k in MODEL_KEYS}})
    identity = {k: v for k, v in flat.items() if k not in NOT_IDENTITY}
    for key in FILES:
        value = flat.get(key) if key != "model.preserve_csv" else model.get("preserve_csv")
        identity[key] = value
        identity[f"{key}.sha256"] = _file_hash(value)
    prompts = data.get("val_prompts")
    paths = [] if prompts is None else [prompts] if isinstance(prompts, str) else list(prompts)
    identity["data.val_prompts.sha256"] = [_file_hash(resolve_prompts(p)) for p in paths]
    identity["data.limit"], identity["data.kinds"] = data.get("limit"), data.get("kinds")
    return identity


def identity_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(setting, value in saved, value in current)`` for every setting that differs (names sorted, a file's
    name before its hash)."""
    keys = sorted(set(saved) | set(current), key=lambda k: (k.removesuffix(".sha256"), k.endswith(".sha256")))
    return [(k, saved.get(k), current.get(k)) for k in keys if _plain(saved.get(k)) != _plain(current.get(k))]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def check_same_run(record: Any, current: Mapping[str, Any], ckpt: str, subcommand: str) -> None:
    """Refuse ``--ckpt_path`` of another run: for ``fit`` any difference of identity, for ``validate``/``test``/
    ``predict`` other concepts (evaluating an edit under another concept's metrics mislabels it).

    Raises:
        RECEError: one line naming what differs and how to start a new run.
    """
    saved = record.get("identity") if isinstance(record, Mapping) else None
    if not isinstance(saved, Mapping):
        if subcommand == "fit":
            raise RECEError(f"--ckpt_path {ckpt} holds no run identity (written by an older rece); it cannot be "
                            "resumed safely: leave out --ckpt_path to start a new run")
        return
    if subcommand != "fit":
        theirs, ours = saved.get("model.concepts"), current.get("model.concepts")
        if _plain(theirs) != _plain(ours):
            raise RECEError(f"--ckpt_path {ckpt} erased {_shown(theirs)}, but model.concepts is {_shown(ours)} here; "
                            f"set --model.concepts to {_shown(theirs)} to {subcommand} that edit, or give a checkpoint "
                            f"of a run that erased {_shown(ours)}")
        return
    differences = identity_differences({k: v for k, v in saved.items() if k != BASE_KEY}, current)
    if not differences:
        return
    key, theirs, ours = differences[0]
    more = f" (and {len(differences) - 1} more: {', '.join(d[0] for d in differences[1:4])}" if len(differences) > 1 \
        else ""
    more += ", …)" if len(differences) > 4 else ")" if more else ""
    raise RECEError(f"--ckpt_path {ckpt} belongs to another run: {key} is {_shown(theirs)} there, {_shown(ours)} "
                    f"here{more}; resume with that run's settings (its config.yaml), or leave out --ckpt_path to "
                    "start a new run")


class RecordIdentity(L.Callback):
    """Write the run's identity and the stages done into every checkpoint (under :data:`IDENTITY_KEY`).

    Args:
        identity: :func:`run_identity` of the run's config.
    """

    def __init__(self, identity: Mapping[str, Any]) -> None:
        self.identity = dict(identity)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        stages = list(getattr(pl_module, "stages", []))
        index = getattr(pl_module, "stage_index", len(stages) - 1)
        identity = dict(self.identity)
        editor = getattr(pl_module, "editor", None)
        if editor is not None:  # informational: check_base compares the fingerprint itself when the edit is loaded
            fingerprint = json.dumps(base_fingerprint(editor.original), sort_keys=True)
            identity[BASE_KEY] = tensor_sha256({}, header=fingerprint)
        checkpoint[IDENTITY_KEY] = {"identity": identity, "stages": stages[: index + 1]}
