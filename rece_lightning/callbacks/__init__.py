"""Callbacks of rece-lightning (their composable configs live in the top-level ``callbacks/`` folder)."""

from rece_lightning.callbacks.export import ExportEdit
from rece_lightning.callbacks.image_grid import ImageGridLogger

__all__ = ["ExportEdit", "ImageGridLogger"]
