"""rece-lightning: Reliable and Efficient Concept Erasure (RECE, ECCV 2024) for diffusers pipelines, in Lightning.

``import rece_lightning`` is light: the names below load their module on first use, so the maths
(:mod:`rece_lightning.maths.closed_form`), the recipe and the exports never import Lightning; :class:`RECEModule` and
:class:`RECEDataModule` do.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rece_lightning.version import __version__

_EXPORTS = {
    "EditState": "maths.edit_state",
    "GenerationConfig": "recipes.config",
    "KVEditor": "maths.editor",
    "PromptDataset": "lightning.data",
    "RECEConfig": "recipes.config",
    "RECEDataModule": "lightning.data",
    "RECEError": "errors",
    "RECEModule": "lightning.module",
    "Recipe": "recipes.paper",
    "UCEConfig": "recipes.config",
    "apply_edit_map": "artefacts.export",
    "erase": "recipes.paper",
    "export_edit": "artefacts.export",
    "load_edit_map": "artefacts.export",
    "load_kv_into": "artefacts.export",
    "load_kv_weights": "artefacts.export",
    "read_prompts": "artefacts.prompts",
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
    from rece_lightning.artefacts.export import (
        apply_edit_map,
        export_edit,
        load_edit_map,
        load_kv_into,
        load_kv_weights,
    )
    from rece_lightning.artefacts.prompts import read_prompts
    from rece_lightning.errors import RECEError
    from rece_lightning.lightning.data import PromptDataset, RECEDataModule
    from rece_lightning.lightning.module import RECEModule
    from rece_lightning.maths.edit_state import EditState
    from rece_lightning.maths.editor import KVEditor
    from rece_lightning.recipes.config import GenerationConfig, RECEConfig, UCEConfig
    from rece_lightning.recipes.paper import Recipe, erase
