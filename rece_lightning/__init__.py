"""rece-lightning: Reliable and Efficient Concept Erasure (RECE, ECCV 2024) for diffusers pipelines, in Lightning."""

from rece_lightning.data import PromptDataset, RECEDataModule, read_prompts
from rece_lightning.editor import KVEditor
from rece_lightning.errors import RECEError
from rece_lightning.export import apply_edit_map, export_edit, load_edit_map, load_kv_into, load_kv_weights
from rece_lightning.module import GenerationConfig, RECEConfig, RECEModule, UCEConfig

__all__ = [
    "GenerationConfig",
    "KVEditor",
    "PromptDataset",
    "RECEConfig",
    "RECEDataModule",
    "RECEError",
    "RECEModule",
    "UCEConfig",
    "apply_edit_map",
    "export_edit",
    "load_edit_map",
    "load_kv_into",
    "load_kv_weights",
    "read_prompts",
]

__version__ = "0.1.0"
