"""Seeded generation of rendered training sets (images, labels, captions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .captions import sample_training_pair
from .render import render_array
from .world import ATTRIBUTES, Scene, random_scene


@dataclass
class RenderedSet:
    """A batch of rendered scenes.

    Attributes:
        images: uint8 array (N, 32, 32, 3).
        labels: int64 array (N, n_attributes), columns ordered as ``ATTRIBUTES``.
        captions: one training caption per image (empty if not requested).
    """

    images: np.ndarray
    labels: np.ndarray
    captions: list[str]


def _to_uint8(scene: Scene) -> np.ndarray:
    return np.round(render_array(scene) * 255).astype(np.uint8)


def render_scenes(scenes: list[Scene]) -> np.ndarray:
    """Render scenes to a uint8 array (N, 32, 32, 3)."""
    return np.stack([_to_uint8(s) for s in scenes])


def labels_of(scenes: list[Scene]) -> np.ndarray:
    """Class indices (N, n_attributes) of scenes."""
    return np.asarray([[s.labels()[k] for k in ATTRIBUTES] for s in scenes], dtype=np.int64)


def make_set(n: int, seed: int, with_captions: bool = False) -> RenderedSet:
    """Render ``n`` random scenes (with training captions if asked), deterministically."""
    rng = np.random.default_rng(seed)
    scenes: list[Scene] = []
    captions: list[str] = []
    for _ in range(n):
        if with_captions:
            scene, caption = sample_training_pair(rng)
            captions.append(caption)
        else:
            scene = random_scene(rng)
        scenes.append(scene)
    return RenderedSet(render_scenes(scenes), labels_of(scenes), captions)
