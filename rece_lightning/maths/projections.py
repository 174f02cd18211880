"""Find, read and write the cross-attention key/value projections (``attn2.to_k`` / ``attn2.to_v``) of a UNet.

Layers are selected by module name, as diffusers names them, never by walking ``named_children()`` by hand; this
works for any ``UNet2DConditionModel`` (SD 1.x, SD 2.x, SDXL-shaped) and for any module exposing the same names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from rece_lightning.errors import RECEError

Kind = Literal["to_k", "to_v"]

MAIN_SPACE = "tokens"
"""The input space of the token embeddings (:attr:`Projection.space`): the one every family has. Layers of other
spaces read other embeddings of the same text (Flux's pooled CLIP embedding, HiDream's Llama layers)."""


@dataclass(frozen=True)
class Projection:
    """One cross-attention projection of the UNet.

    Attributes:
        name: module path inside the UNet, e.g. ``down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k``.
        kind: ``"to_k"`` or ``"to_v"``.
        module: the ``nn.Linear`` itself (its weight is edited in place; a bias, as Flux's ``context_embedder`` has,
            is left unchanged, see :mod:`rece_lightning.models.families.flux`).
        owner: the pipeline component holding the layer (``unet``, or ``transformer`` for Flux): the prefix of its
            keys in LoRA files and checkpoints.
        space: the input space the layer reads (:data:`MAIN_SPACE`, the token embeddings, unless the family reads the
            text through several embeddings): layers of one space read the same embedding of a text and share one
            edit map; different spaces are edited independently (:mod:`rece_lightning.maths.spaces`).
    """

    name: str
    kind: Kind
    module: nn.Linear
    owner: str = "unet"
    space: str = MAIN_SPACE

    @property
    def key(self) -> str:
        """The UNet state-dict key of the weight (UCE's checkpoint convention)."""
        return f"{self.name}.weight"


def find_projections(unet: nn.Module, kinds: Iterable[Kind] = ("to_k", "to_v")) -> list[Projection]:
    """All ``attn2.to_k`` / ``attn2.to_v`` projections of ``unet``, in module order.

    Raises:
        RECEError: when the UNet has no cross-attention layers, or a projection has a bias (SD's have none).
    """
    wanted = tuple(kinds)
    found: list[Projection] = []
    for name, module in unet.named_modules():
        if "attn2" not in name:
            continue
        kind = name.rsplit(".", 1)[-1]
        if kind not in wanted or not name.endswith(f"attn2.{kind}"):
            continue
        if not isinstance(module, nn.Linear):
            raise RECEError(f"{name} is a {type(module).__name__}, expected nn.Linear; RECE edits linear projections")
        if module.bias is not None:
            raise RECEError(f"{name} has a bias; the closed-form edit assumes bias-free projections as in SD")
        found.append(Projection(name=name, kind=kind, module=module))  # type: ignore[arg-type]
    if not found:
        raise RECEError(
            "the UNet has no cross-attention layers (no modules named '*attn2.to_k' / '*attn2.to_v'); "
            "RECE needs a text-conditioned UNet2DConditionModel"
        )
    widths = {p.module.in_features for p in found}
    if len(widths) != 1:
        raise RECEError(f"cross-attention projections disagree on the text width: {sorted(widths)}")
    return found


def linear_layer(denoiser: nn.Module, name: str, kind: Kind, owner: str, space: str = MAIN_SPACE) -> Projection:
    """The linear layer ``name`` of ``denoiser`` reading the input space ``space`` as a :class:`Projection` (a bias
    is allowed: only the weight is edited), e.g. Flux's ``context_embedder``.

    Raises:
        RECEError: ``denoiser`` has no linear layer of that name.
    """
    try:
        module = denoiser.get_submodule(name)
    except AttributeError:
        raise RECEError(f"the {owner} has no layer {name!r}; it does not read text the way this family does") from None
    if not isinstance(module, nn.Linear):
        raise RECEError(f"{name} is a {type(module).__name__}, expected nn.Linear; RECE edits linear projections")
    return Projection(name=name, kind=kind, module=module, owner=owner, space=space)


def read_weights(projections: Iterable[Projection]) -> dict[str, Tensor]:
    """Detached CPU copies of the projection weights, keyed by UNet state-dict key."""
    return {p.key: p.module.weight.detach().to("cpu", copy=True) for p in projections}


@torch.no_grad()
def write_weights(projections: Iterable[Projection], weights: Mapping[str, Tensor]) -> None:
    """Copy ``weights`` (keyed by state-dict key) into the projections, casting to each module's dtype/device."""
    for p in projections:
        if p.key in weights:
            p.module.weight.copy_(weights[p.key].to(device=p.module.weight.device, dtype=p.module.weight.dtype))


def check_kv_weights(projections: Iterable[Projection], weights: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Select and validate the K/V entries of a state dict against the UNet.

    Accepts a whole UNet state dict (UCE checkpoints store one) or just the K/V weights, keys with or without a
    ``unet.`` prefix (``transformer.`` for Flux). Every projection must be present with the right shape and finite values.
    """
    projections = list(projections)
    prefixes = {f"{p.owner}." for p in projections} | {"unet."}
    by_key = {next((k.removeprefix(x) for x in prefixes if k.startswith(x)), k): v for k, v in weights.items()}
    selected: dict[str, Tensor] = {}
    missing, bad_shape = [], []
    for p in projections:
        tensor = by_key.get(p.key)
        if tensor is None:
            missing.append(p.key)
        elif tuple(tensor.shape) != tuple(p.module.weight.shape):
            bad_shape.append(f"{p.key}: file {tuple(tensor.shape)} vs model {tuple(p.module.weight.shape)}")
        else:
            selected[p.key] = tensor
    if missing or bad_shape:
        lines = [f"{source} does not fit this model's cross-attention projections:"]
        if missing:
            lines.append(f"  {len(missing)} missing keys, e.g. {missing[0]}")
        if bad_shape:
            lines.append(f"  {len(bad_shape)} shape mismatches, e.g. {bad_shape[0]}")
        lines.append("  use a K/V file saved from the same base model (keys are UNet state-dict keys)")
        raise RECEError("\n".join(lines))
    for key, tensor in selected.items():
        if not torch.isfinite(tensor).all():
            raise RECEError(f"{source}: {key} contains non-finite values (NaN or inf)")
    return selected
