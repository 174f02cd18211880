"""rece-lightning: Reliable and Efficient Concept Erasure (RECE, ECCV 2024) for diffusers pipelines, in Lightning.

``import rece_lightning`` is light: the names below load their module on first use, so the maths
(:mod:`rece_lightning.closed_form`), the recipe and the exports never import Lightning; :class:`RECEModule` and
:class:`RECEDataModule` do.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rece_lightning.version import __version__

_EXPORTS = {
    "EditState": "edit_state",
    "GenerationConfig": "config",
    "KVEditor": "editor",
    "PromptDataset": "data",
    "RECEConfig": "config",
    "RECEDataModule": "data",
    "RECEError": "errors",
    "RECEModule": "module",
    "Recipe": "recipe",
    "UCEConfig": "config",
    "apply_edit_map": "export",
    "erase": "recipe",
    "export_edit": "export",
    "load_edit_map": "export",
    "load_kv_into": "export",
    "load_kv_weights": "export",
    "read_prompts": "prompts",
}

__all__ = [
    "__version__",
    "EditState",
    "GenerationConfig",
    "KVEditor",
    "PromptDataset",
    "RECEConfig",
    "RECEDataModule",
    "RECEError",
    "RECEModule",
    "Recipe",
    "UCEConfig",
    "apply_edit_map",
    "erase",
    "export_edit",
    "load_edit_map",
    "load_kv_into",
    "load_kv_weights",
    "read_prompts",
]


def __getattr__(name: str) -> Any:
    """Load the module of a public name on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rece_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"rece_lightning.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from rece_lightning.config import GenerationConfig, RECEConfig, UCEConfig
    from rece_lightning.data import PromptDataset, RECEDataModule
    from rece_lightning.edit_state import EditState
    from rece_lightning.editor import KVEditor
    from rece_lightning.errors import RECEError
    from rece_lightning.export import apply_edit_map, export_edit, load_edit_map, load_kv_into, load_kv_weights
    from rece_lightning.module import RECEModule
    from rece_lightning.prompts import read_prompts
    from rece_lightning.recipe import Recipe, erase
