"""Save an edit in forms users can use at once; every file is written to a temporary path and renamed.

* ``kv_weights.safetensors``: the edited text-reading weights (``attn2.to_k/to_v``; Flux, SD3: ``context_embedder``)
  keyed by the denoiser's own state-dict keys,
  loadable with ``unet.load_state_dict(load_file(path), strict=False)`` (the UCE checkpoint convention);
* ``edit_map.safetensors``: the text-side maps ``T`` (``W' = W T``, one per projection kind, ``<kind>.T``; one tensor
  ``T`` when keys and values share it; a family with several input spaces adds one per space, ``<space>.<kind>.T`` or
  ``<space>.T``, :mod:`rece_lightning.maths.spaces`) with metadata to apply them to the base model or undo them;
* ``pytorch_lora_weights.safetensors``: a LoRA of the edit's own rank (exact; or capped, with its error recorded) in
  the diffusers/PEFT format (``unet.<module>.lora_A.weight``
  / ``lora_B.weight``; ``transformer.`` for Flux and SD3; no alpha so the scale is 1) that ``pipe.load_lora_weights(folder)``
  loads;
* ``pipeline/``: the whole edited pipeline via ``save_pretrained`` (on request);
* ``README.md``: the model card (:mod:`rece_lightning.lightning.model_card`), written last, when given.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from rece_lightning.artefacts.checks import EDITED_MARKER
from rece_lightning.artefacts.integrity import base_fingerprint, check_base, check_sha256
from rece_lightning.errors import RECEError
from rece_lightning.files import atomic_dir, atomic_path, tensor_sha256
from rece_lightning.maths.editor import KVEditor
from rece_lightning.maths.projections import MAIN_SPACE, check_kv_weights, write_weights
from rece_lightning.maths.spaces import SpacedEditor, group_by_space

KV_WEIGHTS = "kv_weights.safetensors"
EDIT_MAP = "edit_map.safetensors"
LORA = "pytorch_lora_weights.safetensors"
PIPELINE = "pipeline"
CARD = "README.md"
FORMATS = ("kv_weights", "edit_map", "lora", "pipeline")


def _metadata(tensors: Mapping[str, Tensor], editor: KVEditor | SpacedEditor, extra: Mapping[str, Any] | None) -> dict[str, str]:
    """The metadata written with every export: the caller's, a SHA-256 of the file's tensors and a fingerprint of
    the base model's original weights (:mod:`rece_lightning.artefacts.integrity`), checked when the file is loaded."""
    info = {**dict(extra or {}), "sha256": tensor_sha256(tensors), "base_fingerprint": base_fingerprint(editor.original)}
    return {"format": "pt", "rece_lightning": json.dumps(info, default=str)}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``rece_lightning`` metadata of an exported safetensors file (``{}`` for files from elsewhere)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return json.loads((handle.metadata() or {}).get("rece_lightning", "{}"))
    except Exception as err:
        raise RECEError(f"could not read {path}: {err}; is it a safetensors file?") from None


def _verify(path: str | Path, tensors: Mapping[str, Tensor], base: Mapping[str, Tensor] | None) -> dict[str, Any]:
    """Check the tensors read from ``path`` against their hash, and ``base`` (the weights the file is applied to)
    against the base model it was made on; returns the metadata."""
    info = read_metadata(path)
    check_sha256(tensors, info.get("sha256"), str(path))
    if base is not None:
        check_base(info.get("base_fingerprint"), base, str(path))
    return info


def load_kv_weights(path: str | Path) -> dict[str, Tensor]:
    """Read a K/V (or whole-UNet) state dict from safetensors, or from a ``.pt``/``.bin`` file with
    ``torch.load(weights_only=True)`` (never a full unpickle)."""
    path = Path(path)
    if not path.is_file():
        raise RECEError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RECEError(f"could not read weights from {path}: {err}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise RECEError(f"{path} does not hold a state dict of tensors")
    return state


def text_layers_of(denoiser: nn.Module) -> list:
    """The text-reading layers of a denoiser of any supported family (UNet ``attn2.to_k/to_v``; Flux,
    SD3 ``context_embedder``)."""
    from rece_lightning.models.families import FAMILIES

    errors = []
    for family in FAMILIES:
        try:
            return family.find_layers(denoiser)
        except RECEError as err:
            errors.append(str(err))
    raise RECEError(f"{type(denoiser).__name__} has no text-reading layer of a supported family: {errors[0]}")


def save_kv_weights(editor: KVEditor | SpacedEditor, path: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """The edited K/V weights, keyed by UNet state-dict keys, in the model's dtype."""
    weights = {k: v.detach().cpu().contiguous() for k, v in editor.current_weights().items()}
    with atomic_path(path) as tmp:
        save_file(weights, str(tmp), metadata=_metadata(weights, editor, metadata))
    return Path(path)


def load_kv_into(unet: nn.Module, path: str | Path, *, verify_base: bool = True) -> None:
    """Load a K/V weights file into ``unet`` after checking its hash, keys and shapes, and (``verify_base``) that
    ``unet`` holds the original weights of the base model the edit was made on."""
    projections = text_layers_of(unet)
    weights = load_kv_weights(path)
    if Path(path).suffix == ".safetensors":
        current = {p.key: p.module.weight for p in projections}
        _verify(path, weights, current if verify_base else None)
    write_weights(projections, check_kv_weights(projections, weights, str(path)))


def _map_key(space: str, kind: str) -> str:
    """The edit-map key of one space's map of one kind: ``<kind>.T``, ``<space>.<kind>.T`` beyond the tokens."""
    return f"{kind}.T" if space == MAIN_SPACE else f"{space}.{kind}.T"


def save_edit_map(editor: KVEditor | SpacedEditor, path: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """The maps ``T`` (float64) of a "replace" edit: ``W_edited = W_base T``, one map per projection kind and input
    space."""
    if editor.layer_weights is not None:
        raise RECEError("the 'tensor' technique edits each layer differently; export kv_weights or lora instead")
    editors = editor.editors if isinstance(editor, SpacedEditor) else {MAIN_SPACE: editor}
    info = {
        **dict(metadata or {}),
        "edited_kinds": list(editor.edited_kinds),
        "base": "original" if editor.base_is_original else "loaded K/V weights (see uce_weights)",
        "layers": [p.name for p in editor.projections],
        "rank": editor.edit_rank(),
    }
    if len(editors) > 1:
        info["spaces"] = {name: {"layers": [p.name for p in e.projections], "rank": e.edit_rank()}
                          for name, e in editors.items()}
    maps: dict[str, Tensor] = {}
    for name, e in editors.items():
        kinds = list(e.edited_kinds)
        if len(kinds) > 1 and all(e.maps[k] is e.maps[kinds[0]] for k in kinds):
            # keys and values share one map: stored once, as "T" ("<space>.T" beyond the tokens)
            (info if name == MAIN_SPACE else info["spaces"][name])["shared"] = kinds
            maps["T" if name == MAIN_SPACE else f"{name}.T"] = e.maps[kinds[0]].detach().cpu().contiguous()
        else:
            maps.update({_map_key(name, kind): e.maps[kind].detach().cpu().contiguous() for kind in kinds})
    with atomic_path(path) as tmp:
        save_file(maps, str(tmp), metadata=_metadata(maps, editor, info))
    return Path(path)


def load_edit_map(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Maps keyed by projection kind (``to_k``/``to_v``; ``<space>.<kind>`` for another input space) and the
    metadata they were saved with (hash checked)."""
    path = Path(path)
    if not path.is_file():
        raise RECEError(f"edit map {path} does not exist")
    try:
        tensors = load_file(path)
    except Exception as err:
        raise RECEError(f"could not read the edit map {path}: {err}") from None
    info = _verify(path, tensors, None)
    spaces = info.get("spaces", {})
    maps: dict[str, Tensor] = {}
    for key, value in tensors.items():
        stem = key.removesuffix(".T")
        if key == "T":  # the token space's one map, shared by the kinds listed in "shared"
            maps.update(dict.fromkeys(info.get("shared", ["to_k", "to_v"]), value))
        elif "shared" in spaces.get(stem, {}):  # another space's shared map, "<space>.T"
            maps.update({f"{stem}.{kind}": value for kind in spaces[stem]["shared"]})
        else:
            maps[stem] = value
    return maps, info


@torch.no_grad()
def apply_edit_map(unet: nn.Module, path: str | Path, *, undo: bool = False, verify_base: bool = True) -> None:
    """Fold an edit map into ``unet`` (``W ← W T``), or undo it (``W ← W T⁻¹``, when ``T`` is invertible).

    Applying checks (``verify_base``) that ``unet`` holds the original weights of the base model the map was made on.
    """
    maps, info = load_edit_map(path)
    projections = text_layers_of(unet)
    if verify_base and not undo:
        check_base(info.get("base_fingerprint"), {p.key: p.module.weight for p in projections}, str(path))
    groups = group_by_space(projections)
    for key, t in maps.items():
        space, kind = key.rsplit(".", 1) if "." in key else (MAIN_SPACE, key)
        if space not in groups:
            raise RECEError(f"edit map {path} holds a map of the input space {space!r}, which this "
                            f"{type(unet).__name__} does not read (its spaces: {list(groups)})")
        dim = groups[space][0].module.in_features
        if t.shape != (dim, dim):
            raise RECEError(f"edit map {path} is {tuple(t.shape)}, this UNet's text width is {dim}")
        if undo and float(torch.linalg.cond(t)) > 1e8:
            raise RECEError(
                f"the {kind} map in {path} is (nearly) singular: the edit collapsed directions and cannot be undone "
                "from the map; reload the original weights instead (KVEditor.restore_original, or the base model)"
            )
        factor = torch.linalg.inv(t) if undo else t
        for p in groups[space]:
            if p.kind == kind:
                w = p.module.weight
                w.copy_((w.double() @ factor.to(w.device)).to(w.dtype))


def save_lora(editor: KVEditor | SpacedEditor, path: str | Path, rtol: float = 1e-10,
              metadata: Mapping[str, Any] | None = None, max_rank: int | None = None) -> Path:
    """A LoRA of the edit in the diffusers/PEFT format (float32 factors, ``W' = W₀ + B A``), built layer by layer.

    It carries the edit's own rank (exact), or at most ``max_rank`` directions: then it is the truncated SVD
    (:meth:`~rece_lightning.maths.editor.KVEditor.lora_layers`) and the metadata's ``lora`` entry records the relative
    Frobenius error over all layers (``relative_error``) and the worst layer's (``max_layer_relative_error``).
    """
    if max_rank is not None and max_rank < 1:
        raise RECEError(f"the LoRA rank cap must be ≥ 1, got {max_rank}")
    tensors: dict[str, Tensor] = {}
    owners = {p.key: p.owner for p in editor.projections}  # the denoiser's component name: unet, transformer
    norm2 = left2 = worst = 0.0
    rank = kept = 0
    for layer in editor.lora_layers(rtol=rtol, max_rank=max_rank):
        norm2, left2 = norm2 + layer.norm2, left2 + layer.left_out2
        worst = max(worst, (layer.left_out2 / layer.norm2) ** 0.5 if layer.norm2 else 0.0)
        kept = max(kept, layer.b.shape[1])
        rank = max(rank, layer.rank)
        if layer.b.shape[1] == 0:
            continue
        module = layer.key.removesuffix(".weight")
        tensors[f"{owners[layer.key]}.{module}.lora_A.weight"] = layer.a.float().cpu().contiguous()
        tensors[f"{owners[layer.key]}.{module}.lora_B.weight"] = layer.b.float().cpu().contiguous()
    if not tensors:
        raise RECEError("the edit is empty (no projection changed): there is no LoRA to export")
    info = {"rank": kept, "edit_rank": rank, "max_rank": max_rank, "exact": left2 == 0.0,
            "relative_error": (left2 / norm2) ** 0.5 if norm2 else 0.0, "max_layer_relative_error": worst,
            "error": "Frobenius norm of (W_edited - W0 - B A) over ||W_edited - W0||, float64, before float32 storage"}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=_metadata(tensors, editor, {**dict(metadata or {}), "lora": info}))
    return Path(path)


def export_edit(
    editor: KVEditor | SpacedEditor,
    out_dir: str | Path,
    formats: Sequence[str] = ("kv_weights", "edit_map", "lora"),
    *,
    pipeline: Any | None = None,
    metadata: Mapping[str, Any] | None = None,
    card: Callable[[Mapping[str, Path]], str] | None = None,
    lora_max_rank: int | None = None,
) -> dict[str, Path]:
    """Write the requested ``formats`` into ``out_dir``; returns the written paths by format (``lora_max_rank``: see
    :func:`save_lora`).

    ``card`` makes the model card's text from the written files; it is written last (``README.md``, key ``card``),
    so that a card never names a file that is not there.
    """
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise RECEError(f"unknown export formats {sorted(unknown)}; choose from {list(FORMATS)}")
    out = Path(out_dir)
    written: dict[str, Path] = {}
    if "kv_weights" in formats:
        written["kv_weights"] = save_kv_weights(editor, out / KV_WEIGHTS, metadata)
    if "edit_map" in formats and editor.layer_weights is None:
        written["edit_map"] = save_edit_map(editor, out / EDIT_MAP, metadata)
    if "lora" in formats:
        written["lora"] = save_lora(editor, out / LORA, metadata=metadata, max_rank=lora_max_rank)
    if "pipeline" in formats:
        if pipeline is None:
            raise RECEError("exporting the pipeline needs the pipeline object")
        editor.apply()
        with atomic_dir(out / PIPELINE) as tmp:
            pipeline.save_pretrained(tmp, safe_serialization=True)
            info = {**dict(metadata or {}), "base_fingerprint": base_fingerprint(editor.original)}
            (tmp / EDITED_MARKER).write_text(json.dumps(info, default=str, indent=1), encoding="utf-8")
        written["pipeline"] = out / PIPELINE
    if card is not None:
        text = card(dict(written))
        with atomic_path(out / CARD) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written["card"] = out / CARD
    return written
