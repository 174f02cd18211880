"""The edit inside a Lightning checkpoint: the edit itself and the base model's fingerprint, never the weights.

A checkpoint's ``state_dict`` is empty: ``checkpoint["rece"]`` holds the stage and the
:class:`~rece_lightning.maths.edit_state.EditState` (the text-side maps ``T`` and their low-rank steps; the per-layer
weights only for the general "tensor" path), the kept best stage's (so keep-best survives an interrupted run), a
SHA-256 of all these tensors and a fingerprint of the base model's original weights (and of the loaded K/V base,
``uce.weights``), :mod:`rece_lightning.artefacts.integrity`. Loading verifies them and rebuilds the edited K/V from the base
model exactly as the run did (:meth:`~rece_lightning.maths.editor.KVEditor.apply`): megabytes instead of a copy of every
text-reading layer (SDXL: hundreds of MB per checkpoint). Checkpoints of earlier versions, which also hold the edited
K/V weights in ``state_dict``, still load (their weights are checked against the model's layers).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from rece_lightning.artefacts.integrity import base_fingerprint, check_base, check_sha256
from rece_lightning.errors import RECEError
from rece_lightning.files import tensor_sha256
from rece_lightning.maths.edit_state import EditState
from rece_lightning.maths.projections import MAIN_SPACE, check_kv_weights
from rece_lightning.recipes.paper import Recipe

__all__ = ["Best", "load_edit", "save_edit", "verify_hash"]

Best = tuple[float, str, EditState]  # (score, stage, state) of the stage keep-best holds


def _edit_tensors(rece: dict[str, Any]) -> dict[str, Tensor]:
    """The tensors of a checkpoint's edit section (current state and kept best), named for hashing."""
    tensors = {f"rece.{k}": v for k, v in rece["state"].items()}
    if rece.get("best") is not None:
        tensors.update({f"rece.best.{k}": v for k, v in rece["best"]["state"].items()})
    return tensors


def save_edit(checkpoint: dict[str, Any], recipe: Recipe, owner: str, best: Best | None) -> None:
    """Empty ``checkpoint``'s state dict (the K/V are rebuilt from the base model) and add the edit section."""
    checkpoint["state_dict"] = {}
    editor = recipe.editor
    rece: dict[str, Any] = {"stage": recipe.stage, "state": editor.state.tensors()}
    if best is not None:
        score, stage, state = best
        rece["best"] = {"score": score, "stage": stage, "state": state.tensors()}
    rece["sha256"] = tensor_sha256(_edit_tensors(rece))
    rece["base"] = base_fingerprint(editor.original)
    if not editor.base_is_original:  # K/V weights loaded as the base (uce.weights): they must be the same again
        rece["kv_base"] = base_fingerprint(editor.base)
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


def _check_state(state: EditState, recipe: Recipe, source: str) -> None:
    """The saved state fits this model, in every input space (:mod:`rece_lightning.maths.spaces`): the spaces exist, each
    map has its space's width, and the per-layer weights' keys and shapes fit its layers (general path)."""
    editors = recipe.editor.editors
    unknown = sorted(set(state.spaces) - set(editors))
    if unknown:
        raise RECEError(f"{source} holds the edit of input spaces {unknown}, which this model does not read (its "
                        f"spaces: {list(editors)}); use it with the model.pretrained it was made from")
    for name, editor in editors.items():
        part = state if name == MAIN_SPACE else state.spaces.get(name)
        if part is None:
            continue
        for kind, t in part.maps.items():
            if tuple(t.shape) != (editor.dim, editor.dim):
                where = "text width" if name == MAIN_SPACE else f"width of input space {name!r}"
                raise RECEError(f"{source} holds a {kind} map of shape {tuple(t.shape)}; this model's {where} is "
                                f"{editor.dim}; use it with the model.pretrained it was made from")
        if part.layer_weights is not None:
            check_kv_weights(editor.projections, part.layer_weights, source)


def load_edit(checkpoint: dict[str, Any], recipe: Recipe, owner: str) -> Best | None:
    """Verify the checkpoint (hash, base model, shapes), restore its stage and edit into ``recipe`` (rebuilt from the
    base weights and folded into the model), and return the kept best stage it carries."""
    verify_hash(checkpoint)
    rece = checkpoint["rece"]
    prefix = f"{owner}."
    weights = {k: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith(prefix)}
    check_base(rece["base"], recipe.editor.original, "the checkpoint")
    if "kv_base" in rece:
        check_base(rece["kv_base"], recipe.editor.base, "the checkpoint's K/V base (uce.weights)")
    if weights:  # a checkpoint of an earlier version, which also held the edited weights
        check_kv_weights(recipe.editor.projections, {k.removeprefix(prefix): v for k, v in weights.items()},
                         "the checkpoint")
    state = EditState.from_tensors(rece["state"])
    _check_state(state, recipe, "the checkpoint")
    recipe.restore(rece["stage"], state)
    best = rece.get("best")
    return None if best is None else (best["score"], best["stage"], EditState.from_tensors(best["state"]))
