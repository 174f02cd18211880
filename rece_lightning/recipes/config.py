"""The recipe's settings as small dataclasses that validate themselves when they are made.

Every value is checked before any work (``__post_init__``, as PEFT's ``LoraConfig`` does), so a bad value fails at
start-up with one message naming the setting, the value and the fix, instead of minutes into a run. Defaults are the
official RECE/UCE settings (github.com/CharlesGong12/RECE ``train.py``, ``train_uce.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rece_lightning.errors import RECEError
from rece_lightning.files import check_readable_file, check_writable_dir
from rece_lightning.maths.closed_form import Derivation, SurrogateItem

__all__ = [
    "MAX_ITERATIONS",
    "MAX_WEIGHT",
    "GenerationConfig",
    "RECEConfig",
    "UCEConfig",
    "as_config",
    "check_choice",
    "check_concepts",
    "check_number",
]

MAX_ITERATIONS = 100
"""The most RECE (or robust) iterations one run may ask for: each is a stage and an epoch (the papers use 1 to 6)."""

MAX_WEIGHT = 1e6
"""The largest λ, γ or scale accepted: the official values are 0.1 to 10; far larger ones make the float64 solve
ill-conditioned (a huge λ silently erases nothing, a huge scale overflows)."""


def check_number(name: str, value: Any, *, minimum: float | None = 0.0, strict: bool = False,
                 integer: bool = False, maximum: float | None = None) -> None:
    """Raise unless ``value`` is a finite number (an integer if asked) ``≥ minimum`` (``> minimum`` if ``strict``)
    and ``≤ maximum`` when given."""
    kind = "an integer" if integer else "a finite number"
    ok = isinstance(value, int) if integer else isinstance(value, int | float) and math.isfinite(value)
    if isinstance(value, bool) or not ok:
        raise RECEError(f"{name} must be {kind}, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        bound = f"> {minimum:g}" if strict else f"≥ {minimum:g}"
        raise RECEError(f"{name} must be {bound}, got {value!r}")
    if maximum is not None and value > maximum:
        raise RECEError(f"{name} must be ≤ {maximum:g}, got {value!r}")

def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise RECEError(f"{name} must be one of {list(choices)}, got {value!r}")

def check_texts(name: str, texts: Any) -> None:
    """Raise unless ``texts`` is a list of strings (empty strings allowed: "" is a valid anchor or preserved text)."""
    if not isinstance(texts, list | tuple) or not all(isinstance(t, str) for t in texts):
        raise RECEError(f"{name} must be a list of texts, got {texts!r}")

def check_concepts(concepts: Any, anchor: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """The concepts to erase and one anchor per concept.

    Raises:
        RECEError: no concept, an empty or blank concept, or a number of anchors that is neither 1 nor one per
            concept.
    """
    if not concepts:
        raise RECEError("model.concepts is empty; give at least one concept to erase, e.g. [nudity]")
    check_texts("model.concepts", concepts)
    blank = [c for c in concepts if not c.strip()]
    if blank:
        raise RECEError(f"model.concepts holds an empty concept {blank[0]!r}; every concept must name something "
                        "to erase (use model.anchor for what it becomes)")
    anchors = [anchor] * len(concepts) if isinstance(anchor, str) else list(anchor)
    check_texts("model.anchor", anchors)
    if len(anchors) != len(concepts):
        raise RECEError(f"{len(concepts)} concepts but {len(anchors)} anchors; give one anchor or one per concept")
    return list(concepts), anchors

@dataclass
class UCEConfig:
    """The first edit (UCE, Gandikota et al. 2024, eq. 7) — official ``train_uce.py`` settings by default.

    Attributes:
        lamb: λ > 0, weight of staying close to the current weights.
        erase_scale: weight (≥ 0) of the concept → anchor constraints (token-aligned rows).
        preserve_scale: weight (≥ 0) of the preserved texts; ``None`` = ``max(0.1, 1/len(preserve))`` as official.
        preserve: texts whose outputs are kept (all token rows); official default ``[""]``.
        weights: start from these K/V weights instead of computing UCE (a safetensors file or a ``.pt`` UNet state
            dict read with ``weights_only=True``), e.g. a published UCE checkpoint.
        tokens: ``aligned`` (official RECE: the token-aligned rows of each concept and its anchor, all rows of the
            preserved texts) or ``last`` (official UCE scripts ``uce_sd_erase.py`` / ``uce_flux_edit.py``: one row
            per text, its last word token).
    """

    lamb: float = 0.5
    erase_scale: float = 1.0
    preserve_scale: float | None = None
    preserve: list[str] = field(default_factory=lambda: [""])
    weights: str | None = None
    tokens: str = "aligned"

    def __post_init__(self) -> None:
        check_number("uce.lamb (λ)", self.lamb, strict=True, maximum=MAX_WEIGHT)
        check_choice("uce.tokens", self.tokens, ("aligned", "last"))
        check_number("uce.erase_scale", self.erase_scale, maximum=MAX_WEIGHT)
        if self.preserve_scale is not None:
            check_number("uce.preserve_scale", self.preserve_scale, maximum=MAX_WEIGHT)
        check_texts("uce.preserve", self.preserve)
        if self.weights is not None:
            check_readable_file(self.weights, "model.uce.weights",
                                "give UCE's K/V weights (.safetensors, or a .pt UNet state dict)")

    def scale_of_preserve(self, n_preserved: int) -> float:
        """The preserve scale used for ``n_preserved`` texts (official ``max(0.1, 1/n)``, rounded to 3 digits)."""
        if self.preserve_scale is not None:
            return self.preserve_scale
        return round(max(0.1, 1 / max(1, n_preserved)), 3)

@dataclass
class RECEConfig:
    """RECE iterations (Gong et al., ECCV 2024) — official ``train.py`` settings by default.

    Attributes:
        iterations: number (≥ 0) of derive-and-erase iterations after the first edit.
        derivation: ``regzero`` (default), ``standard`` (towards ``derivation_target``) or ``surrogate``.
        gamma: γ ≥ 0, the regularisation of the derived embedding (``--regular_scale``).
        surrogate_item: ``1st``, ``2nd`` or ``both`` (surrogate derivation only).
        derivation_target: per-concept target texts for ``standard`` (official ``--old_target_concept``);
            default: the anchors.
        lamb, erase_scale, preserve_scale: the UCE weights of each RECE edit (λ > 0, scales ≥ 0).
        preserve: texts preserved in each RECE edit; ``None`` = one anchor per concept (official ``train.py``;
            the objects/artists scripts use ``[""]`` plus preserved concepts).
    """

    iterations: int = 3
    derivation: Derivation = "regzero"
    gamma: float = 0.1
    surrogate_item: SurrogateItem = "1st"
    derivation_target: list[str] | None = None
    lamb: float = 0.1
    erase_scale: float = 1.0
    preserve_scale: float = 0.1
    preserve: list[str] | None = None

    def __post_init__(self) -> None:
        check_number("rece.iterations", self.iterations, integer=True, maximum=MAX_ITERATIONS)
        check_choice("rece.derivation", self.derivation, ("regzero", "standard", "surrogate"))
        check_number("rece.gamma (γ)", self.gamma, maximum=MAX_WEIGHT)
        check_choice("rece.surrogate_item", self.surrogate_item, ("1st", "2nd", "both"))
        if self.derivation_target is not None:
            check_texts("rece.derivation_target", self.derivation_target)
        check_number("rece.lamb (λ)", self.lamb, strict=True, maximum=MAX_WEIGHT)
        check_number("rece.erase_scale", self.erase_scale, maximum=MAX_WEIGHT)
        check_number("rece.preserve_scale", self.preserve_scale, maximum=MAX_WEIGHT)
        if self.preserve is not None:
            check_texts("rece.preserve", self.preserve)

@dataclass
class GenerationConfig:
    """How validation, test and predict images are generated.

    Attributes:
        num_inference_steps: denoising steps (≥ 1) of the pipeline's scheduler.
        guidance_scale: classifier-free guidance (finite, ≥ 0; a row's own guidance column wins when present).
        height, width: image size in pixels (multiples of 8); ``None`` = the UNet's native size.
        image_dir: save every generated image under ``<image_dir>/<stage>-<fingerprint>/`` and reuse images already
            there, so an interrupted evaluation resumes without regenerating finished images (the fingerprint
            covers the model, the edit and these settings).
    """

    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    image_dir: str | None = None

    def __post_init__(self) -> None:
        check_number("generation.num_inference_steps", self.num_inference_steps, minimum=1, integer=True)
        check_number("generation.guidance_scale", self.guidance_scale)
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None:
                check_number(f"generation.{name}", value, minimum=8, integer=True)
                if value % 8:
                    raise RECEError(f"generation.{name} must be a multiple of 8, got {value}")
        if self.image_dir is not None:
            check_writable_dir(self.image_dir, "generation.image_dir")

Config = TypeVar("Config", UCEConfig, RECEConfig, GenerationConfig)

def as_config(value: Any, cls: type[Config]) -> Config:
    """``value`` as a ``cls``: an instance, a mapping of its fields (validated), or ``None`` for the defaults."""
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    if isinstance(value, dict):
        unknown = set(value) - set(cls.__dataclass_fields__)
        if unknown:
            raise RECEError(f"unknown {cls.__name__} settings {sorted(unknown)}; "
                            f"known: {sorted(cls.__dataclass_fields__)}")
        return cls(**value)
    raise RECEError(f"expected a {cls.__name__} or a mapping, got {type(value).__name__}")
