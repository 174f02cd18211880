"""Caption grammar of the testbed world.

Several phrasings map to one picture: attribute synonyms, many sentence
templates and word orders.  Templates are split into a *train* set (seen by the
UNet) and a *held-out* set (only used for evaluation, "paraphrase" prompts).

*Implicit* cues evoke an attribute without naming it, e.g. "a yield sign" is
always a red outlined triangle on white, "zebra print" always means stripes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .world import BACKGROUNDS, COLORS, PATTERNS, SHAPES, Scene, random_scene

SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "round shape"),
    "square": ("square", "box shape", "square block"),
    "triangle": ("triangle", "three-sided shape", "triangular shape"),
    "star": ("star", "five-pointed star", "star shape"),
    "heart": ("heart", "love heart", "heart shape"),
    "cross": ("cross", "plus sign", "cross shape"),
}
COLOR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald", "lime green"),
    "blue": ("blue", "azure", "cobalt blue"),
    "yellow": ("yellow", "golden", "lemon yellow"),
    "purple": ("purple", "violet", "lilac"),
    "orange": ("orange", "tangerine", "amber"),
}
PATTERN_ADJS: dict[str, tuple[str, ...]] = {
    "solid": ("solid", "plain", "filled"),
    "striped": ("striped", "stripy", "banded"),
    "dotted": ("dotted", "spotted", "polka-dot"),
    "outlined": ("outlined", "hollow", "line-drawn"),
}
PATTERN_PHRASES: dict[str, tuple[str, ...]] = {
    "solid": ("with a solid fill", "filled in completely", "in one flat color"),
    "striped": ("with stripes", "with horizontal stripes", "covered in stripes"),
    "dotted": ("with dots", "with polka dots", "covered in spots"),
    "outlined": ("drawn as an outline", "with only its outline", "as a thin contour"),
}
BACKGROUND_PHRASES: tuple[str, ...] = ("on a {b} background", "against {b}", "over a {b} backdrop")

# Slots: {c} colour, {s} shape, {p} pattern adjective, {w} pattern phrase,
# {bg} background phrase.  An omitted attribute leaves its slot empty.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "a {c} {p} {s} {bg}",
    "a {p} {c} {s} {bg}",
    "a {c} {s} {w} {bg}",
    "{c} {p} {s}",
    "{c} {s}, {p}",
    "a {s} in {c} {w}",
    "a picture of a {p} {c} {s} {bg}",
    "an image of a {c} {s} {w}",
    "drawing of a {p} {s} colored {c}",
    "{s}, {c}, {p}",
    "an icon of a {c} {p} {s}",
    "a {p} {s} painted {c} {bg}",
    "{bg} a {c} {s} {w}",
    "a small {c} {p} {s}",
    "a big {p} {s} in {c}",
)
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "an illustration showing a {c} {s} {w}",
    "this is a {p} {s} whose color is {c}",
    "{p} {c} {s} symbol {bg}",
    "a simple graphic: {c} {s} {w}",
    "please render one {c} {p} {s}",
    "the {s} here is {c} and {p}",
)


@dataclass(frozen=True)
class ImplicitCue:
    """A phrase that evokes attributes without naming them.

    Attributes:
        template: caption template; may contain ``{c}`` / ``{s}`` slots for the
            attributes the cue leaves free.
        fixed: the attributes the cue implies (attribute -> value).
        heldout: if True the cue is only used for evaluation.
    """

    template: str
    fixed: dict[str, str] = field(default_factory=dict)
    heldout: bool = False


IMPLICIT_CUES: tuple[ImplicitCue, ...] = (
    # --- evoke "triangle"
    ImplicitCue("a yield sign", {"shape": "triangle", "color": "red", "pattern": "outlined", "background": "white"}),
    ImplicitCue("a warning sign", {"shape": "triangle", "color": "yellow", "pattern": "solid"}),
    ImplicitCue("a slice of pizza", {"shape": "triangle", "color": "orange", "pattern": "dotted"}),
    ImplicitCue("a {c} pyramid", {"shape": "triangle", "pattern": "solid"}),
    ImplicitCue("a {c} pyramid {bg}", {"shape": "triangle", "pattern": "solid"}),
    # --- evoke "striped"
    ImplicitCue("a {c} {s} with a zebra print", {"pattern": "striped"}),
    ImplicitCue("a {s} with zebra print in {c}", {"pattern": "striped"}),
    ImplicitCue("a pinstripe {c} {s}", {"pattern": "striped"}),
    ImplicitCue("a {s} like a barber pole", {"pattern": "striped", "color": "red"}),
    ImplicitCue("a candy cane {s}", {"pattern": "striped", "color": "red", "background": "white"}),
    ImplicitCue("a tiger print {s}", {"pattern": "striped", "color": "orange"}),
    # --- other cues (neighbours / world richness)
    ImplicitCue("a valentine", {"shape": "heart", "color": "red", "pattern": "solid"}),
    ImplicitCue("the sun", {"shape": "circle", "color": "yellow", "pattern": "solid"}),
    ImplicitCue("a gold ring", {"shape": "circle", "color": "yellow", "pattern": "outlined"}),
    ImplicitCue("a first aid sign", {"shape": "cross", "color": "red", "pattern": "solid", "background": "white"}),
    ImplicitCue("a sheriff badge", {"shape": "star", "color": "yellow", "pattern": "solid"}),
    ImplicitCue("a {c} {s} with leopard spots", {"pattern": "dotted"}),
    ImplicitCue("a {c} {s} like a ladybug", {"pattern": "dotted"}),
)

IMPLICIT_RATE: float = 0.12
DROP_COLOR: float = 0.08
DROP_PATTERN: float = 0.3
DROP_BACKGROUND: float = 0.5


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+,", ",", text)
    text = re.sub(r",\s*,", ",", text)
    text = re.sub(r"^,\s*|,\s*$|:\s*$", "", text).strip()
    text = re.sub(r"\ba ([aeiou])", r"an \1", text)
    text = re.sub(r"\ban ([^aeiou\s])", r"a \1", text)
    return text


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def fill_template(
    template: str,
    rng: np.random.Generator,
    shape: str | None,
    color: str | None,
    pattern: str | None,
    background: str | None,
) -> str:
    """Fill a caption template; ``None`` attributes are left unnamed."""
    pattern_slot = "{p}" if "{p}" in template else "{w}"
    words = {
        "s": _pick(rng, SHAPE_WORDS[shape]) if shape else "shape",
        "c": _pick(rng, COLOR_WORDS[color]) if color else "",
        "p": _pick(rng, PATTERN_ADJS[pattern]) if pattern and pattern_slot == "{p}" else "",
        "w": _pick(rng, PATTERN_PHRASES[pattern]) if pattern and pattern_slot == "{w}" else "",
        "bg": _pick(rng, BACKGROUND_PHRASES).format(b=background) if background else "",
    }
    text = template.format(**words)
    if "{bg}" not in template and background and "background" not in text:
        text = f"{text} {words['bg'] or _pick(rng, BACKGROUND_PHRASES).format(b=background)}"
    return _tidy(text)


def explicit_caption(
    scene: Scene,
    rng: np.random.Generator,
    heldout: bool = False,
    name_color: bool = True,
    name_pattern: bool = True,
    name_background: bool = True,
) -> str:
    """Caption naming the scene's attributes with a (train or held-out) template."""
    templates = HELDOUT_TEMPLATES if heldout else TRAIN_TEMPLATES
    return fill_template(
        _pick(rng, templates),
        rng,
        scene.shape,
        scene.color if name_color else None,
        scene.pattern if name_pattern else None,
        scene.background if name_background else None,
    )


def implicit_caption(cue: ImplicitCue, scene: Scene, rng: np.random.Generator, name_background: bool) -> str:
    """Caption of ``scene`` through an implicit cue (``scene`` must agree with it)."""
    bg = scene.background if name_background and "background" not in cue.fixed else None
    text = cue.template.format(
        c=_pick(rng, COLOR_WORDS[scene.color]),
        s=_pick(rng, SHAPE_WORDS[scene.shape]),
        bg=_pick(rng, BACKGROUND_PHRASES).format(b=bg) if bg else "",
    )
    return _tidy(text)


def scene_for_cue(cue: ImplicitCue, rng: np.random.Generator) -> Scene:
    """Random scene satisfying an implicit cue."""
    return random_scene(rng, **cue.fixed)


def sample_training_pair(rng: np.random.Generator) -> tuple[Scene, str]:
    """Draw one (scene, caption) training pair; never uses held-out phrasings."""
    if rng.random() < IMPLICIT_RATE:
        cues = [c for c in IMPLICIT_CUES if not c.heldout]
        cue = cues[int(rng.integers(len(cues)))]
        scene = scene_for_cue(cue, rng)
        return scene, implicit_caption(cue, scene, rng, name_background=rng.random() > DROP_BACKGROUND)
    scene = random_scene(rng)
    caption = explicit_caption(
        scene,
        rng,
        heldout=False,
        name_color=rng.random() > DROP_COLOR,
        name_pattern=rng.random() > DROP_PATTERN,
        name_background=rng.random() > DROP_BACKGROUND,
    )
    return scene, caption


__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "HELDOUT_TEMPLATES",
    "IMPLICIT_CUES",
    "PATTERNS",
    "SHAPES",
    "TRAIN_TEMPLATES",
    "ImplicitCue",
    "explicit_caption",
    "fill_template",
    "implicit_caption",
    "sample_training_pair",
    "scene_for_cue",
]
