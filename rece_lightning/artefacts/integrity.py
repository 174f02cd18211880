"""Integrity of saved edits: a hash of the edited tensors, and a fingerprint of the base model's original weights.

* :func:`check_sha256` compares named tensors with the exact hash written beside them
  (:func:`rece_lightning.files.tensor_sha256`: names, dtypes, shapes and bytes): a file whose tensors were corrupted
  or altered after they were written no longer matches it.
* :func:`base_fingerprint` summarises the original text-reading weights of the base model by their norms and a few
  fixed random bilinear probes ``rᵀ W s`` per layer. It is compared with a tolerance (:func:`check_base`), so the same
  base model loaded in another dtype (float32, float16, bfloat16) matches, while an edit made on another base model
  is refused.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from rece_lightning.errors import RECEError
from rece_lightning.files import tensor_sha256

__all__ = ["PROBES", "TOLERANCE", "base_fingerprint", "check_base", "check_sha256"]

PROBES = 4  # random bilinear probes per layer
TOLERANCE = 2e-2  # relative to the layer's Frobenius norm; bfloat16 rounding moves a probe by ~4e-3 of it


def check_sha256(tensors: Mapping[str, Tensor], expected: str | None, source: str) -> None:
    """Raise when ``tensors`` do not hash to ``expected`` (nothing to check when ``expected`` is ``None``)."""
    if expected is not None and tensor_sha256(tensors) != expected:
        raise RECEError(f"{source} is corrupted or was altered after it was written (its tensors do not match the "
                        "SHA-256 saved with them); use an intact copy or produce it again")


def _probes(rows: int, cols: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(rows * 100_003 + cols)
    return (torch.randn(PROBES, rows, generator=generator, dtype=torch.float64),
            torch.randn(PROBES, cols, generator=generator, dtype=torch.float64))


@torch.no_grad()
def base_fingerprint(weights: Mapping[str, Tensor]) -> dict[str, list[float]]:
    """Per weight: ``[‖W‖_F, r₁ᵀWs₁, …]`` with fixed standard-normal probes (float64, any input dtype); each probe
    has standard deviation ``‖W‖_F`` over random weights, and moves by ~``ε‖W‖_F`` under rounding to a dtype."""
    out: dict[str, list[float]] = {}
    for name, weight in weights.items():
        w = weight.detach().to("cpu", torch.float64)
        r, s = _probes(*w.shape)
        values = torch.einsum("pi,ij,pj->p", r, w, s)
        out[name] = [float(w.norm()), *map(float, values)]
    return out


def check_base(saved: Mapping[str, list[float]] | None, weights: Mapping[str, Tensor], source: str) -> None:
    """Raise when ``weights`` (the base model's original K/V) are not those ``saved`` was computed from."""
    if saved is None:
        return
    current = base_fingerprint({k: weights[k] for k in saved if k in weights})
    for name, expected in saved.items():
        got = current.get(name)
        scale = max(abs(expected[0]), 1e-12)
        if got is None or any(abs(a - b) > TOLERANCE * scale for a, b in zip(got, expected, strict=True)):
            raise RECEError(f"{source} was made on another base model (the original weights of {name} differ); "
                            "use it with the model.pretrained it was made from")
