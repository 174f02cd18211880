"""Export the edit at the end of ``rece fit`` (K/V safetensors, edit map, exact LoRA, optionally the pipeline)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L

from rece_lightning.artefacts.export import FORMATS, export_edit, read_metadata
from rece_lightning.lightning.callbacks.console import say
from rece_lightning.lightning.callbacks.run import run_dir
from rece_lightning.lightning.model_card import model_card
from rece_lightning.lightning.run_results import kept_record, kept_stage, stage_metrics


def check_free_dirpath(dirpath: str | Path | None) -> None:
    """``dirpath`` is unset, absent or an empty folder: an export never replaces files that are already there (another
    run's export, or anything else).

    Raises:
        RECEError: naming the folder and the fix.
    """
    if dirpath is None:
        return
    path = Path(dirpath).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        from rece_lightning.errors import RECEError

        raise RECEError(f"ExportEdit dirpath {path} already holds files (another run's export?); exports never "
                        "replace files: give a new folder, or leave dirpath unset to export into the run's own "
                        "export/ folder")


class ExportEdit(L.Callback):
    """Write the final (or kept) edit into ``dirpath`` (default ``<log_dir>/export``), atomically; the metadata of
    every file names the stage and, under ``kept_stage``, the selection record of ``<run>/kept_stage.json``.

    Args:
        dirpath: output folder; ``None`` = ``export/`` inside the run's log folder. A folder that already holds
            files (another run's export) is refused before any work: exports are never replaced.
        formats: any of ``kv_weights``, ``edit_map``, ``lora``, ``pipeline`` (the whole edited pipeline via
            ``save_pretrained``: several GB for Stable Diffusion, so off by default).
        write_card: also write the model card ``README.md`` (:mod:`rece_lightning.lightning.model_card`): the erased
            concepts, the recipe, every stage's metrics (from ``eval/<stage>/*.json``), the kept stage and the lines
            that load the edit.
        lora_max_rank: at most this many directions in the LoRA (``None``: the edit's own rank, exact); a cut LoRA
            is the truncated SVD and its relative error is printed and recorded in the file's metadata.
    """

    def __init__(self, dirpath: str | None = None, formats: list[str] | None = None, write_card: bool = True,
                 lora_max_rank: int | None = None) -> None:
        self.dirpath, self.write_card = dirpath, write_card
        self.lora_max_rank = lora_max_rank
        self.formats = list(formats or ["kv_weights", "edit_map", "lora"])
        unknown = set(self.formats) - set(FORMATS)
        if unknown:
            from rece_lightning.errors import RECEError

            raise RECEError(f"unknown export formats {sorted(unknown)}; choose from {list(FORMATS)}")
        self.written: dict[str, Path] = {}

    @classmethod
    def check_sources(cls, init_args: Mapping[str, Any]) -> None:
        """Run by ``rece`` before the model loads (:func:`~rece_lightning.artefacts.checks.check_model_sources`):
        refuse a ``dirpath`` that already holds files."""
        check_free_dirpath(init_args.get("dirpath"))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_free_dirpath(self.dirpath)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        out = Path(self.dirpath) if self.dirpath else run_dir(trainer) / "export"
        stage = getattr(pl_module, "stage", None)
        metadata = {"hparams": dict(pl_module.hparams), "stage": stage}
        if callable(getattr(pl_module, "kept_stage", None)):  # which stage was kept and why (kept_stage.json)
            metadata["kept_stage"] = pl_module.kept_stage()
        self.written = export_edit(
            pl_module.editor, out, self.formats, pipeline=getattr(pl_module, "pipeline", None), metadata=metadata,
            card=(lambda files: self.card(trainer, pl_module, files, out)) if self.write_card else None,
            lora_max_rank=self.lora_max_rank,
        )
        for fmt, path in self.written.items():
            if fmt == "card":
                say(f"rece: wrote the model card {path}")
                continue
            lora = read_metadata(path).get("lora") if fmt == "lora" else None
            about = "" if lora is None else (f" (rank {lora['rank']}, exact)" if lora["exact"] else
                                             f" (rank {lora['rank']} of {lora['edit_rank']}, truncated SVD: relative error "
                                             f"{lora['relative_error']:.3g}, worst layer "
                                             f"{lora['max_layer_relative_error']:.3g})")
            say(f"rece: exported {fmt} to {path}{about}")

    @staticmethod
    def card(trainer: L.Trainer, pl_module: L.LightningModule, files: Mapping[str, Path], out: Path) -> str:
        """The model card of the export (stages and metrics read back from the run folder)."""
        stages = stage_metrics(run_dir(trainer), getattr(pl_module, "stages", None))
        family = getattr(pl_module, "family", None)
        exported = getattr(pl_module, "stage", None) or kept_stage(pl_module)  # the state the export holds
        return model_card(dict(pl_module.hparams), stages, exported, files, out.absolute(),
                          getattr(family, "denoiser_name", "unet"), reason=kept_record(pl_module).get("reason"))
