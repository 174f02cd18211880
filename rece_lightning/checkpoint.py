"""The edit inside a Lightning checkpoint: only the edited text-reading weights, never a copy of the pipeline.

A checkpoint's ``state_dict`` keeps the edited layers (denoiser state-dict keys under the module's attribute, e.g.
``unet.…``), and ``checkpoint["rece"]`` holds the stage, the :class:`~rece_lightning.edit_state.EditState` (and the
kept best stage's, so keep-best survives an interrupted run), a SHA-256 of all these tensors and a fingerprint of the
base model's original weights (:mod:`rece_lightning.integrity`), verified when the checkpoint is loaded.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from rece_lightning.cross_attention import check_kv_weights
from rece_lightning.edit_state import EditState
from rece_lightning.errors import RECEError
from rece_lightning.files import tensor_sha256
from rece_lightning.integrity import base_fingerprint, check_base, check_sha256
from rece_lightning.recipe import Recipe

__all__ = ["Best", "load_edit", "save_edit", "verify_hash"]

Best = tuple[float, str, EditState]  # (score, stage, state) of the stage keep-best holds


def _edit_tensors(rece: dict[str, Any]) -> dict[str, Tensor]:
    """The tensors of a checkpoint's edit section (current state and kept best), named for hashing."""
    tensors = {f"rece.{k}": v for k, v in rece["state"].items()}
    if rece.get("best") is not None:
        tensors.update({f"rece.best.{k}": v for k, v in rece["best"]["state"].items()})
    return tensors


def save_edit(checkpoint: dict[str, Any], recipe: Recipe, owner: str, best: Best | None) -> None:
    """Reduce ``checkpoint``'s state dict to the edited layers (``owner.<key>``) and add the edit section."""
    keys = {f"{owner}.{p.key}" for p in recipe.editor.projections}
    weights = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
    checkpoint["state_dict"] = weights
    rece: dict[str, Any] = {"stage": recipe.stage, "state": recipe.editor.state.tensors()}
    if best is not None:
        score, stage, state = best
        rece["best"] = {"score": score, "stage": stage, "state": state.tensors()}
    rece["sha256"] = tensor_sha256({**weights, **_edit_tensors(rece)})
    rece["base"] = base_fingerprint(recipe.editor.original)
    checkpoint["rece"] = rece


def verify_hash(checkpoint: dict[str, Any], source: str = "the checkpoint") -> None:
    """Refuse a checkpoint whose edit section is missing or whose tensors do not match their SHA-256 (needs no model,
    so the ``rece`` command checks it before loading one)."""
    rece = checkpoint.get("rece")
    if not isinstance(rece, dict) or "sha256" not in rece:
        raise RECEError(f"{source} holds no RECE edit (it was not written by this version of rece fit); "
                        "pass a checkpoint from <run>/checkpoints/")
    weights = {k: v for k, v in checkpoint.get("state_dict", {}).items() if not k.startswith("rece.")}
    check_sha256({**weights, **_edit_tensors(rece)}, rece["sha256"], source)


def load_edit(checkpoint: dict[str, Any], recipe: Recipe, owner: str) -> Best | None:
    """Verify the checkpoint (hash, base model, keys and shapes), restore its stage and edit into ``recipe`` (folded
    into the model), and return the kept best stage it carries."""
    verify_hash(checkpoint)
    rece = checkpoint["rece"]
    prefix = f"{owner}."
    weights = {k: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith(prefix)}
    check_base(rece["base"], recipe.editor.original, "the checkpoint")
    check_kv_weights(recipe.editor.projections, {k.removeprefix(prefix): v for k, v in weights.items()},
                     "the checkpoint")
    recipe.restore(rece["stage"], EditState.from_tensors(rece["state"]))
    best = rece.get("best")
    return None if best is None else (best["score"], best["stage"], EditState.from_tensors(best["state"]))
