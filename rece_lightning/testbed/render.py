"""Deterministic numpy/PIL renderer of testbed scenes (32x32 RGB).

Shapes are drawn at 4x resolution and box-filtered down, so edges are
anti-aliased.  Fill patterns are defined on the output pixel grid so that
stripes (period 4 px) and dots survive the x2 latent downsampling.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .world import BACKGROUND_RGB, COLOR_RGB, IMAGE_SIZE, Scene

SUPERSAMPLE: int = 4
OUTLINE_WIDTH: int = 2  # pixels, at output resolution
_DARK: float = 0.3  # brightness of the "off" parts of striped / dotted fills


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * 0.45
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _heart(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(64):
        t = 2 * math.pi * k / 64
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((cx + r * x / 16.5, cy - r * (y + 2.5) / 15.5))
    return pts


def _cross(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    w = r * 0.36
    return [
        (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w),
        (cx + r, cy + w), (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r),
        (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w),
    ]  # fmt: skip


def _triangle(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    h = r * math.sqrt(3)
    return [(cx, cy - h * 2 / 3 * 1.05), (cx + r * 1.1, cy + h / 3 * 1.05), (cx - r * 1.1, cy + h / 3 * 1.05)]


def shape_mask(scene: Scene) -> np.ndarray:
    """Soft coverage mask of the scene's shape, float32 (32, 32) in [0, 1]."""
    big = IMAGE_SIZE * SUPERSAMPLE
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    cx = (IMAGE_SIZE / 2 + scene.dx) * SUPERSAMPLE
    cy = (IMAGE_SIZE / 2 + scene.dy) * SUPERSAMPLE
    r = scene.size / 2 * SUPERSAMPLE
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif scene.shape == "square":
        q = r * 0.86
        draw.rectangle((cx - q, cy - q, cx + q, cy + q), fill=255)
    elif scene.shape == "triangle":
        draw.polygon(_triangle(cx, cy, r), fill=255)
    elif scene.shape == "star":
        draw.polygon(_star(cx, cy, r * 1.1), fill=255)
    elif scene.shape == "heart":
        draw.polygon(_heart(cx, cy, r), fill=255)
    elif scene.shape == "cross":
        draw.polygon(_cross(cx, cy, r), fill=255)
    else:  # pragma: no cover - Scene validates shapes
        raise ValueError(scene.shape)
    if scene.pattern == "outlined":
        inner = img.filter(ImageFilter.MinFilter(2 * OUTLINE_WIDTH * SUPERSAMPLE + 1))
        img = Image.fromarray(np.asarray(img) - np.asarray(inner))
    small = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


@cache
def _pattern_brightness(pattern: str) -> np.ndarray:
    """Per-pixel brightness multiplier of the shape colour for a fill pattern."""
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    if pattern == "striped":
        on = (yy // 2) % 2 == 0
    elif pattern == "dotted":
        on = ~(((yy % 4) < 2) & ((xx % 4) < 2))
    else:
        on = np.ones_like(yy, dtype=bool)
    return np.where(on, 1.0, _DARK).astype(np.float32)


def render_array(scene: Scene) -> np.ndarray:
    """Render a scene to a float32 array (32, 32, 3) with values in [0, 1]."""
    mask = shape_mask(scene)[..., None]
    fg = np.asarray(COLOR_RGB[scene.color], dtype=np.float32) / 255.0
    bg = np.asarray(BACKGROUND_RGB[scene.background], dtype=np.float32) / 255.0
    fill = fg[None, None, :] * _pattern_brightness(scene.pattern)[..., None]
    out = mask * fill + (1.0 - mask) * bg[None, None, :]
    return np.clip(out, 0.0, 1.0)


def render(scene: Scene) -> Image.Image:
    """Render a scene to a 32x32 RGB PIL image."""
    return Image.fromarray(np.round(render_array(scene) * 255).astype(np.uint8), "RGB")
