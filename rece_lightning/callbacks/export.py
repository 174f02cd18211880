"""Export the edit at the end of ``rece fit`` (K/V safetensors, edit map, exact LoRA, optionally the pipeline)."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from rece_lightning.callbacks.run import run_dir
from rece_lightning.export import FORMATS, export_edit, read_metadata


class ExportEdit(L.Callback):
    """Write the final (or kept) edit into ``dirpath`` (default ``<log_dir>/export``), atomically; the metadata of
    every file names the stage and, under ``kept_stage``, the selection record of ``<run>/kept_stage.json``.

    Args:
        dirpath: output folder; ``None`` = ``export/`` inside the run's log folder.
        formats: any of ``kv_weights``, ``edit_map``, ``lora``, ``pipeline`` (the whole edited pipeline via
            ``save_pretrained``: several GB for Stable Diffusion, so off by default).
        lora_max_rank: at most this many directions in the LoRA (``None``: the edit's own rank, exact); a cut LoRA
            is the truncated SVD and its relative error is printed and recorded in the file's metadata.
    """

    def __init__(self, dirpath: str | None = None, formats: list[str] | None = None,
                 lora_max_rank: int | None = None) -> None:
        self.dirpath = dirpath
        self.lora_max_rank = lora_max_rank
        self.formats = list(formats or ["kv_weights", "edit_map", "lora"])
        unknown = set(self.formats) - set(FORMATS)
        if unknown:
            from rece_lightning.errors import RECEError

            raise RECEError(f"unknown export formats {sorted(unknown)}; choose from {list(FORMATS)}")
        self.written: dict[str, Path] = {}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        out = Path(self.dirpath) if self.dirpath else run_dir(trainer) / "export"
        metadata = {"hparams": dict(pl_module.hparams), "stage": getattr(pl_module, "stage", None)}
        if callable(getattr(pl_module, "kept_stage", None)):  # which stage was kept and why (kept_stage.json)
            metadata["kept_stage"] = pl_module.kept_stage()
        self.written = export_edit(
            pl_module.editor, out, self.formats, pipeline=getattr(pl_module, "pipeline", None), metadata=metadata,
            lora_max_rank=self.lora_max_rank,
        )
        for fmt, path in self.written.items():
            lora = read_metadata(path).get("lora") if fmt == "lora" else None
            about = "" if lora is None else (f" (rank {lora['rank']}, exact)" if lora["exact"] else
                                             f" (rank {lora['rank']} of {lora['edit_rank']}, truncated SVD: relative error "
                                             f"{lora['relative_error']:.3g}, worst layer "
                                             f"{lora['max_layer_relative_error']:.3g})")
            print(f"rece: exported {fmt} to {path}{about}")
