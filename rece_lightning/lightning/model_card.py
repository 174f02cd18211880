"""The model card of an exported edit (``export/README.md``), in the Hugging Face format.

YAML front matter (``base_model``, ``library_name: diffusers``, tags ``concept-erasure`` and ``rece``), then the
erased concepts, the recipe and its knobs, every validated stage's metrics with the kept one marked, and the exact
lines that load the edit for each written file (``pipe.load_lora_weights(…)``, the K/V file, the edit map).
Framework-free: the numbers come from the caller (``rece fit`` reads them from ``eval/<stage>/*.json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from rece_lightning.lightning.run_results import is_fraction, recipe_knobs
from rece_lightning.models.source import hub_id, is_testbed

__all__ = ["FRONT_MATTER_TAGS", "model_card", "read_front_matter"]

FRONT_MATTER_TAGS: tuple[str, ...] = ("concept-erasure", "rece", "text-to-image", "diffusers")
"""Tags of every card (``lora`` is added when the exact LoRA is exported)."""

def _cell(value: Any) -> str:
    text = repr(value) if isinstance(value, str) and value.strip() != value or value == "" else str(value)
    return f"`{text}`".replace("|", "\\|")


def _number(metric: str, value: float) -> str:
    return f"{100 * value:.1f} %" if is_fraction(metric) else f"{value:.4g}"


def _kept_because(hparams: Mapping[str, Any]) -> str:
    if hparams.get("recipe") == "robust":
        return "chosen by the robust recipe's stopping rule"
    metric = hparams.get("keep_best")
    if metric:
        best = "lowest" if hparams.get("keep_best_mode", "min") == "min" else "highest"
        return f"the edited stage with the {best} `{metric}` (`model.keep_best`; the earlier stage on ties)"
    return "the last stage (`model.keep_best` is not set)"


def _load_base(pretrained: str, torch_dtype: str) -> tuple[list[str], str]:
    """The imports and the line that load the base model as ``pipe`` (a Hub id ``org/name@revision`` with its
    revision)."""
    if is_testbed(pretrained):
        return ["from rece_lightning.testbed import load_testbed_pipeline"], "pipe = load_testbed_pipeline()"
    found = hub_id(pretrained)
    source = repr(found[0]) if found else repr(pretrained)
    revision = f", revision={found[1]!r}" if found and found[1] else ""
    dtype = "" if torch_dtype == "float32" else f", torch_dtype=torch.{torch_dtype}"
    imports = (["import torch"] if dtype else []) + ["from diffusers import DiffusionPipeline"]
    return imports, f"pipe = DiffusionPipeline.from_pretrained({source}{revision}{dtype})"


def model_card(
    hparams: Mapping[str, Any],
    stages: Mapping[str, Mapping[str, float]],
    kept: str | None,
    files: Mapping[str, str | Path],
    folder: str | Path,
    denoiser: str = "unet",
    reason: str | None = None,
) -> str:
    """The card's Markdown text.

    Args:
        hparams: the module's hyper-parameters (``RECEModule.hparams``).
        stages: ``{stage: {metric: value}}`` in stage order (fractions in ``[0, 1]``, shown in %).
        kept: the exported stage.
        files: written files by export format (``kv_weights``, ``edit_map``, ``lora``, ``pipeline``).
        folder: the export folder, as the load lines name it.
        denoiser: the pipeline attribute holding the text-reading layers (``unet``; ``transformer`` for Flux, SD3).
        reason: why ``kept`` was kept (the run's ``kept_stage.json``); default: read from the hyper-parameters.
    """
    pretrained = str(hparams.get("pretrained") or "")
    concepts = list(hparams.get("concepts") or [])
    anchor = hparams.get("anchor", " ")
    anchors = list(anchor) if isinstance(anchor, list | tuple) else [anchor] * len(concepts)
    found = hub_id(pretrained)
    front = {"base_model": found[0] if found else pretrained, "library_name": "diffusers",
             "tags": [*FRONT_MATTER_TAGS, *(["lora"] if "lora" in files else [])]}
    names = ", ".join(f'"{c}"' for c in concepts) or "no concept"
    out = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
           f"# {names} erased from {pretrained} with RECE", "",
           "A closed-form edit of the cross-attention keys and values that read the text (RECE: Gong et al., "
           "*Reliable and Efficient Concept Erasure of Text-to-Image Diffusion Models*, ECCV 2024), made with "
           "rece-lightning. Nothing else in the model changes.", "",
           "## Erased concepts", "", "| concept | mapped to (anchor) |", "| --- | --- |"]
    out += [f"| {_cell(c)} | {_cell(a)} |" for c, a in zip(concepts, anchors, strict=False)]
    iterations = (hparams.get("robust") or {}).get("iterations") if hparams.get("recipe") == "robust" else \
        (hparams.get("rece") or {}).get("iterations")
    out += ["", "## Recipe", "",
            f"`{hparams.get('recipe', 'paper')}` recipe: a UCE edit, then {iterations} RECE iteration(s), each one "
            "closed-form stage. Its knobs (the `model.` options of `rece fit`):", "", "| knob | value |",
            "| --- | --- |"]
    out += [f"| `{name}` | {_cell(value)} |" for name, value in recipe_knobs(hparams).items()]
    out += ["", "## Stages", ""]
    if stages:
        metrics = list(dict.fromkeys(m for values in stages.values() for m in values))
        out += ["| stage | " + " | ".join(f"`{m}`" for m in metrics) + " |",
                "| --- |" + " --- |" * len(metrics)]
        for stage, values in stages.items():
            name = f"**{stage} (kept)**" if stage == kept else stage
            cells = [_number(m, values[m]) if m in values else "" for m in metrics]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out += ["", "Rates are in % of the validation images of each kind of prompt. "]
    else:
        out += ["No stage was validated (no validation prompts)."]
    why = reason.rstrip(".") if reason else _kept_because(hparams)
    out += [f"The exported stage is **{kept or 'none'}**: {why}.", "", "## Use", ""]
    imports, load = _load_base(pretrained, str(hparams.get("torch_dtype") or "float32"))
    where = f"EDIT = {str(Path(folder)) !r}  # this folder (or the Hub repo you upload it to, for the LoRA)"
    if "lora" in files:
        out += ["With diffusers alone (needs `peft`): the exact LoRA of the edit, `pytorch_lora_weights.safetensors`.",
                "", "```python", *imports, "", load, where, "pipe.load_lora_weights(EDIT)", "```", ""]
    if "kv_weights" in files:
        out += [f"Or the edited weights themselves (`{Path(files['kv_weights']).name}`, checked against its hash "
                "and the base model's weights):", "", "```python", *imports,
                "from rece_lightning.artefacts.export import load_kv_into", "", load, where,
                f"load_kv_into(pipe.{denoiser}, f\"{{EDIT}}/{Path(files['kv_weights']).name}\")", "```", ""]
    if "edit_map" in files:
        out += [f"The edit map (`{Path(files['edit_map']).name}`: `W' = W T` per projection kind) applies or undoes "
                "the edit: `rece_lightning.artefacts.export.apply_edit_map(pipe.unet, path, undo=False)`.", ""]
    if "pipeline" in files:
        out += ["The whole edited pipeline: `DiffusionPipeline.from_pretrained(f\"{EDIT}/pipeline\")`.", ""]
    out += ["## Citation", "", "```bibtex", "@inproceedings{gong2024reliable,",
            "  title={Reliable and Efficient Concept Erasure of Text-to-Image Diffusion Models},",
            "  author={Gong, Chao and Chen, Kai and Wei, Zhipeng and Chen, Jingjing and Jiang, Yu-Gang},",
            "  booktitle={ECCV}, year={2024}", "}", "```", ""]
    return "\n".join(out)


def read_front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a card (``{}`` when there is none)."""
    lines = text.splitlines()
    if not lines or lines[0] != "---" or "---" not in lines[1:]:
        return {}
    end = lines.index("---", 1)
    return yaml.safe_load("\n".join(lines[1:end])) or {}

