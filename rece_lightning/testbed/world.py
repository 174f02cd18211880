"""Vocabulary of the procedural testbed world and the scene specification.

A scene is one shape, drawn in one colour with one fill pattern, on a plain
background, with jittered size and position.  Every attribute has a fixed
integer index used by the classifier heads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

IMAGE_SIZE: int = 32
"""Side of the rendered RGB images, in pixels."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted", "outlined")
BACKGROUNDS: tuple[str, ...] = ("black", "white", "gray")

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": COLORS,
    "pattern": PATTERNS,
    "background": BACKGROUNDS,
}
"""Attribute name -> ordered label set (index = class id)."""

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 40),
    "purple": (150, 55, 195),
    "orange": (245, 130, 25),
}
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "black": (18, 18, 18),
    "white": (238, 238, 238),
    "gray": (128, 128, 128),
}

MIN_SIZE: float = 17.0
MAX_SIZE: float = 25.0
MAX_SHIFT: float = 3.0


@dataclass(frozen=True)
class Scene:
    """Ground truth of one rendered image.

    Attributes:
        shape: one of :data:`SHAPES`.
        color: one of :data:`COLORS`.
        pattern: one of :data:`PATTERNS`.
        background: one of :data:`BACKGROUNDS`.
        size: bounding size of the shape in pixels.
        dx: horizontal offset of the centre in pixels.
        dy: vertical offset of the centre in pixels.
    """

    shape: str
    color: str
    pattern: str
    background: str
    size: float = 21.0
    dx: float = 0.0
    dy: float = 0.0

    def __post_init__(self) -> None:
        for name, values in ATTRIBUTES.items():
            if getattr(self, name) not in values:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; expected one of {values}")

    def labels(self) -> dict[str, int]:
        """Class index of every attribute."""
        return {name: ATTRIBUTES[name].index(getattr(self, name)) for name in ATTRIBUTES}

    def as_dict(self) -> dict[str, object]:
        """Plain-dict view (for CSV rows and logs)."""
        return asdict(self)


def random_scene(
    rng: np.random.Generator,
    shape: str | None = None,
    color: str | None = None,
    pattern: str | None = None,
    background: str | None = None,
) -> Scene:
    """Draw a scene; attributes given as arguments are fixed, the rest uniform.

    Size and position are always jittered.
    """
    # Draw every random number unconditionally so that fixing one attribute
    # does not change the jitter of the others for a given seed.
    s = SHAPES[rng.integers(len(SHAPES))]
    c = COLORS[rng.integers(len(COLORS))]
    p = PATTERNS[rng.integers(len(PATTERNS))]
    b = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    size = float(rng.uniform(MIN_SIZE, MAX_SIZE))
    dx, dy = (float(v) for v in rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=2))
    return Scene(
        shape=shape or s,
        color=color or c,
        pattern=pattern or p,
        background=background or b,
        size=size,
        dx=dx,
        dy=dy,
    )
