"""Save what every attack of ``rece test`` found: adversarial prompts (CSV), embeddings (safetensors) and images."""

from __future__ import annotations

import csv
from typing import Any

import lightning as L
from safetensors.torch import save_file

from rece_lightning.files import atomic_path
from rece_lightning.lightning.callbacks.records import gather_records, merge_records, rows_of
from rece_lightning.lightning.callbacks.run import run_dir

FIELDS = ("row", "case_number", "seed", "prompt", "adversarial_prompt", "attack_info")


class AttackReport(L.Callback):
    """Write ``<log_dir>/attacks/<stage>/<attack>/``: ``prompts.csv`` (one line per prompt row with the adversarial
    prompt and the attack's details as JSON), ``embeddings.safetensors`` (embedding attacks; key = prompt row) and
    ``images/<row>_<case_number>.png``. Results of all DDP processes are gathered; files are written atomically.

    Args:
        save_images: also write the generated images.
    """

    def __init__(self, save_images: bool = True) -> None:
        self.save_images = save_images
        self._items: list[dict[str, Any]] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._items = []

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if not isinstance(outputs, dict) or "images" not in outputs:
            return
        for row, image in zip(rows_of(outputs["rows"]), outputs["images"], strict=True):
            item = {k: row.get(k) for k in (*FIELDS, "attack")}
            embedding = row.get("adversarial_embedding")
            item["_embedding"] = None if embedding is None else embedding.detach().cpu().float().contiguous()
            item["_image"] = image if self.save_images else None
            self._items.append(item)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        items = merge_records(gather_records(self._items))
        self._items = []
        if not trainer.is_global_zero or not items:
            return
        root = run_dir(trainer)
        stage = getattr(pl_module, "stage", "model")
        for attack in dict.fromkeys(str(i["attack"]) for i in items):
            group = [i for i in items if str(i["attack"]) == attack]
            folder = root / "attacks" / stage / attack
            with atomic_path(folder / "prompts.csv") as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=FIELDS)
                writer.writeheader()
                writer.writerows({k: i.get(k) for k in FIELDS} for i in group)
            embeddings = {str(i["row"]): i["_embedding"] for i in group if i["_embedding"] is not None}
            if embeddings:
                with atomic_path(folder / "embeddings.safetensors") as tmp:
                    save_file(embeddings, str(tmp), metadata={"attack": attack, "stage": stage})
            for i in group:
                if i["_image"] is not None:
                    with atomic_path(folder / "images" / f"{int(i['row']):06d}_{i['case_number']}.png") as tmp:
                        i["_image"].save(tmp, format="PNG")
