"""RECE as a LightningModule: each training epoch is one closed-form edit, each validation generates images.

Stages (one per epoch): ``original`` (no edit; validated so that every run reports its own baseline, optional),
``uce`` (erase the concepts towards their anchors with UCE, or start from given K/V weights), then one
``rece-N`` per RECE iteration: derive the embeddings that still regenerate each concept against the original
weights (RECE eq. 8), and erase them towards the anchors, preserving the anchors' own tokens (RECE eq. 9).

Checkpoints hold only the K/V weights of the cross-attention layers, the edit state and the hyper-parameters:
``--ckpt_path`` restores them onto the base model, never a multi-GB copy of the pipeline.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from rece_lightning import closed_form
from rece_lightning.attacks import Attack, NoAttack
from rece_lightning.cross_attention import check_kv_weights
from rece_lightning.editor import KVEditor, Technique
from rece_lightning.errors import RECEError
from rece_lightning.export import load_kv_weights
from rece_lightning.image_store import ImageStore, fingerprint
from rece_lightning.pipeline import check_text_width, generate, load_pipeline
from rece_lightning.text import TextEncoder


@dataclass
class UCEConfig:
    """The first edit (UCE, Gandikota et al. 2024, eq. 7) — official ``train_uce.py`` settings by default.

    Attributes:
        lamb: λ, weight of staying close to the current weights.
        erase_scale: weight of the concept → anchor constraints (token-aligned rows).
        preserve_scale: weight of the preserved texts; ``None`` = ``max(0.1, 1/len(preserve))`` as official.
        preserve: texts whose outputs are kept (all token rows); official default ``[""]``.
        weights: start from these K/V weights instead of computing UCE (a safetensors file or a ``.pt`` UNet state
            dict read with ``weights_only=True``), e.g. a published UCE checkpoint.
    """

    lamb: float = 0.5
    erase_scale: float = 1.0
    preserve_scale: float | None = None
    preserve: list[str] = field(default_factory=lambda: [""])
    weights: str | None = None


@dataclass
class RECEConfig:
    """RECE iterations (Gong et al., ECCV 2024) — official ``train.py`` settings by default.

    Attributes:
        iterations: number of derive-and-erase iterations after the first edit.
        derivation: ``regzero`` (default), ``standard`` (towards ``derivation_target``) or ``surrogate``.
        gamma: γ, the regularisation of the derived embedding (``--regular_scale``).
        surrogate_item: ``1st``, ``2nd`` or ``both`` (surrogate derivation only).
        derivation_target: per-concept target texts for ``standard`` (official ``--old_target_concept``);
            default: the anchors.
        lamb, erase_scale, preserve_scale: the UCE weights of each RECE edit.
        preserve: texts preserved in each RECE edit; ``None`` = one anchor per concept (official ``train.py``;
            the objects/artists scripts use ``[""]`` plus preserved concepts).
    """

    iterations: int = 3
    derivation: closed_form.Derivation = "regzero"
    gamma: float = 0.1
    surrogate_item: closed_form.SurrogateItem = "1st"
    derivation_target: list[str] | None = None
    lamb: float = 0.1
    erase_scale: float = 1.0
    preserve_scale: float = 0.1
    preserve: list[str] | None = None


@dataclass
class GenerationConfig:
    """How validation, test and predict images are generated.

    Attributes:
        num_inference_steps: denoising steps of the pipeline's scheduler.
        guidance_scale: classifier-free guidance (a row's own guidance column wins when present).
        height, width: image size; ``None`` = the UNet's native size.
        image_dir: save every generated image under ``<image_dir>/<stage>-<fingerprint>/`` and reuse images already
            there, so an interrupted evaluation resumes without regenerating finished images (the fingerprint
            covers the model, the edit and these settings).
    """

    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    image_dir: str | None = None


class ClosedFormStep(torch.optim.Optimizer):
    """The "optimizer" of a closed-form method: ``step(closure)`` runs one edit stage on the K/V weights.

    Making each edit an optimizer step keeps Lightning's step counting (``global_step``, checkpointing, logging)
    meaningful although nothing is trained.
    """

    def __init__(self, params) -> None:
        super().__init__(params, defaults={})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        return None if closure is None else closure()


def _coerce(value: Any, cls: type) -> Any:
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls(**value)
    if value is None:
        return cls()
    raise RECEError(f"expected a {cls.__name__} or a mapping, got {type(value).__name__}")


def _read_column(path: str, column: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise RECEError(f"preserve_csv {p} does not exist")
    with p.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if column not in (reader.fieldnames or []):
            raise RECEError(f"{p} has no column {column!r} (columns: {reader.fieldnames})")
        return list(dict.fromkeys(row[column] for row in reader if row[column]))


class RECEModule(L.LightningModule):
    """Reliable and Efficient Concept Erasure (Gong et al., ECCV 2024) of a Stable Diffusion pipeline.

    Args:
        pretrained: a local diffusers pipeline folder, or ``"testbed"`` (the embedded default model).
        concepts: texts to erase, e.g. ``["nudity"]``.
        anchor: what each concept is mapped to: one text for all, or one per concept (official default ``" "``).
        uce: the first edit.
        rece: the RECE iterations.
        preserve_csv: optional CSV whose ``preserve_csv_column`` values (minus the erased concepts) are appended to
            both stages' preserved texts (the artists setting preserves the other artists of a list).
        preserve_csv_column: column read from ``preserve_csv``.
        with_to_k: edit the key projections as well as the values.
        technique: ``replace`` (values of the anchor; one shared map) or ``tensor`` (remove the concept direction).
        generation: image generation settings for validation/test/predict.
        validate_original: spend epoch 0 on validating the unedited model (the baseline of every run).
        keep_best: a logged metric (e.g. ``val/nudity_rate``); after fit the edited stage (UCE or a RECE iteration)
            with its best value is kept, the earlier one on ties, as the paper keeps its lowest nudity rate.
            ``None`` keeps the last stage.
        keep_best_mode: ``min`` or ``max``.
        torch_dtype: dtype of the pipeline (``float16`` on GPUs); the maths always runs in float64.
        attacks: red-teaming attacks run by ``rece test`` on the test prompts (default: no attack). Each is recorded
            by name; an attack without a judge (UnlearnDiffAtk's early stop) uses the first evaluation callback
            that can judge images.
    """

    def __init__(
        self,
        pretrained: str = "testbed",
        concepts: list[str] | None = None,
        anchor: str | list[str] = " ",
        uce: UCEConfig = UCEConfig(),  # noqa: B008 (never mutated; a dataclass default gives nested CLI keys)
        rece: RECEConfig = RECEConfig(),  # noqa: B008
        preserve_csv: str | None = None,
        preserve_csv_column: str = "artist",
        with_to_k: bool = True,
        technique: Technique = "replace",
        generation: GenerationConfig = GenerationConfig(),  # noqa: B008
        validate_original: bool = True,
        keep_best: str | None = None,
        keep_best_mode: Literal["min", "max"] = "min",
        torch_dtype: str = "float32",
        attacks: list[Attack] | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold the K/V weights only
        self.uce_config: UCEConfig = _coerce(uce, UCEConfig)
        self.rece_config: RECEConfig = _coerce(rece, RECEConfig)
        self.generation: GenerationConfig = _coerce(generation, GenerationConfig)
        concepts = [c for c in (concepts or [])]
        if not concepts:
            raise RECEError("model.concepts is empty; give at least one concept to erase, e.g. [nudity]")
        anchors = [anchor] * len(concepts) if isinstance(anchor, str) else list(anchor)
        if len(anchors) != len(concepts):
            raise RECEError(f"{len(concepts)} concepts but {len(anchors)} anchors; give one anchor or one per concept")
        if self.rece_config.iterations < 0:
            raise RECEError(f"rece.iterations must be ≥ 0, got {self.rece_config.iterations}")
        if keep_best_mode not in ("min", "max"):
            raise RECEError(f"keep_best_mode must be 'min' or 'max', got {keep_best_mode!r}")
        for name, cfg in (("uce", self.uce_config), ("rece", self.rece_config)):
            if not cfg.lamb > 0:
                raise RECEError(f"{name}.lamb (λ) must be > 0 so that the closed form is invertible, got {cfg.lamb}")
        self.save_hyperparameters(
            {
                "pretrained": pretrained,
                "concepts": concepts,
                "anchor": anchor,
                "uce": asdict(self.uce_config),
                "rece": asdict(self.rece_config),
                "preserve_csv": preserve_csv,
                "preserve_csv_column": preserve_csv_column,
                "with_to_k": with_to_k,
                "technique": technique,
                "generation": asdict(self.generation),
                "validate_original": validate_original,
                "keep_best": keep_best,
                "keep_best_mode": keep_best_mode,
                "torch_dtype": torch_dtype,
                "attacks": [type(a).__name__ for a in attacks or []],
            }
        )
        self.attacks: list[Attack] = list(attacks or [])
        self.concepts, self.anchors = concepts, anchors
        extra = _read_column(preserve_csv, preserve_csv_column) if preserve_csv else []
        erased = {c.lower() for c in concepts}
        self.extra_preserve = [t for t in extra if t.lower() not in erased]
        self.stages: list[str] = (["original"] if validate_original else []) + ["uce"]
        self.stages += [f"rece-{i + 1}" for i in range(self.rece_config.iterations)]

        pipe = load_pipeline(pretrained, torch_dtype)
        check_text_width(pipe)
        pipe.set_progress_bar_config(disable=True)
        self.pipeline = pipe
        # registered so that Lightning moves them; the pipeline object holds the same modules
        self.unet, self.vae, self.text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
        for module in (self.unet, self.vae, self.text_encoder):
            module.requires_grad_(False).eval()
        self.text = TextEncoder(pipe.tokenizer, pipe.text_encoder)
        for text in [*concepts, *anchors, *self._uce_preserve(), *self._rece_preserve()]:
            self.text.check(text, "text")
        self.editor = KVEditor(self.unet, with_to_k=with_to_k, technique=technique)
        if self.uce_config.weights is not None:
            source = self.uce_config.weights
            self.editor.set_base(check_kv_weights(self.editor.projections, load_kv_weights(source), source))
        self.stage_index = -1
        self._best: tuple[float, int, dict[str, object]] | None = None

    # ----------------------------------------------------------------------------------------- texts
    def _uce_preserve(self) -> list[str]:
        return [*self.uce_config.preserve, *self.extra_preserve]

    def _rece_preserve(self) -> list[str]:
        base = self.anchors if self.rece_config.preserve is None else self.rece_config.preserve
        return [*base, *self.extra_preserve]

    def _stack(self, texts: list[str]) -> Tensor | None:
        return torch.cat([self.text.full(t) for t in texts]) if texts else None

    @staticmethod
    def _uce_anchor(text: str) -> str:
        # official train_uce.py replaces an empty anchor by " "
        return " " if text == "" else text

    # ------------------------------------------------------------------------------------------ edits
    @property
    def stage(self) -> str:
        return "original" if self.stage_index < 0 else self.stages[self.stage_index]

    def uce_step(self) -> None:
        """The first edit: concept → anchor with the official token alignment (UCE ``edit_model``)."""
        cfg = self.uce_config
        if cfg.weights is not None:
            self.editor.reset()  # base already holds the given K/V weights
            return
        preserve = self._uce_preserve()
        scale = cfg.preserve_scale if cfg.preserve_scale is not None else round(max(0.1, 1 / max(1, len(preserve))), 3)
        blocks = [self.text.aligned(c, self._uce_anchor(a)) for c, a in zip(self.concepts, self.anchors, strict=True)]
        self.editor.erase(
            blocks, self._stack(preserve), lamb=cfg.lamb, erase_scale=cfg.erase_scale, preserve_scale=scale
        )

    def rece_step(self) -> list[Tensor]:
        """One RECE iteration (official ``train.py`` epoch): derive every concept's adversarial embedding against
        the current edit, then erase all of them (all token rows) towards the anchors. Returns the embeddings."""
        cfg = self.rece_config
        targets = cfg.derivation_target or self.anchors
        if len(targets) != len(self.concepts):
            raise RECEError("rece.derivation_target needs one text per concept")
        derived = self.editor.derive(
            [self.text.full(concept) for concept in self.concepts],
            gamma=cfg.gamma,
            variant=cfg.derivation,
            targets=[self.text.full(t) for t in targets] if cfg.derivation == "standard" else None,
            surrogate_item=cfg.surrogate_item,
        )
        blocks = [(emb, self.text.full(anchor)) for emb, anchor in zip(derived, self.anchors, strict=True)]
        self.editor.erase(
            blocks,
            self._stack(self._rece_preserve()),
            lamb=cfg.lamb,
            erase_scale=cfg.erase_scale,
            preserve_scale=cfg.preserve_scale,
        )
        return derived

    def _recipe_texts(self) -> list[str]:
        """Every text the edits encode, so that one batched text-encoder pass serves the whole recipe."""
        texts = [*self.concepts, *self.anchors, *map(self._uce_anchor, self.anchors)]
        texts += [*self._uce_preserve(), *self._rece_preserve(), *(self.rece_config.derivation_target or [])]
        return texts

    def run_stage(self, index: int, apply: bool = True) -> None:
        """Run stage ``index`` of :attr:`stages` on top of the previous ones; fold it into the UNet if ``apply``."""
        self.text.encode(self._recipe_texts())  # cached after the first stage
        name = self.stages[index]
        if name == "uce":
            self.uce_step()
        elif name.startswith("rece"):
            self.rece_step()
        self.stage_index = index
        if apply:
            self.editor.apply()

    def erase(self) -> KVEditor:
        """The whole recipe without a Trainer (UCE + all RECE iterations, folded once at the end)."""
        for index in range(self.stage_index + 1, len(self.stages)):
            self.run_stage(index, apply=False)
        self.editor.apply()
        return self.editor

    # -------------------------------------------------------------------------------------- Lightning
    def configure_optimizers(self) -> ClosedFormStep:
        return ClosedFormStep([p.module.weight for p in self.editor.projections])

    def on_fit_start(self) -> None:
        self.editor.to(self.device)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        index = self.current_epoch
        if index >= len(self.stages):
            self.trainer.should_stop = True
            return None
        self.optimizers().step(closure=lambda: self.run_stage(index))
        self.log("rece/stage", float(index), on_step=False, on_epoch=True, batch_size=1, rank_zero_only=True)
        if self.stage != "original":
            self.log("rece/relative_change", self.editor.relative_change(), on_step=False, on_epoch=True, batch_size=1,
                     rank_zero_only=True)
        return None

    def on_train_epoch_end(self) -> None:
        # candidates are the edited stages (the original model is the baseline); ties keep the earlier stage
        if self.hparams.keep_best and self.stage != "original":
            value = self.trainer.callback_metrics.get(self.hparams.keep_best)
            if value is not None:
                score = float(value)
                better = self._best is None or (score < self._best[0] if self.hparams.keep_best_mode == "min"
                                                else score > self._best[0])
                if better:
                    self._best = (score, self.stage_index, self.editor.snapshot())
        if self.stage_index >= len(self.stages) - 1:
            self.trainer.should_stop = True

    def on_train_end(self) -> None:
        if self._best is not None:
            score, index, state = self._best
            self.editor.restore_snapshot(state)
            self.stage_index = index
            self.editor.apply()
            print(f"rece: kept stage {self.stages[index]!r} ({self.hparams.keep_best} = {score:.4g})")

    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        guidance: list[float | None] | None = None,
        prompt_embeds: list[Tensor | None] | None = None,
    ):
        """Images of the current model state, one per prompt (or per embedding), each from its own seed."""
        g = self.generation
        return generate(
            self.pipeline,
            prompts,
            seeds,
            num_inference_steps=g.num_inference_steps,
            guidance_scale=g.guidance_scale,
            guidance=guidance,
            height=g.height,
            width=g.width,
            prompt_embeds=prompt_embeds,
        )

    def image_store(self, root: str | Path | None = None) -> ImageStore | None:
        """The folder for the current model state's images under ``root`` (default ``generation.image_dir``)."""
        root = root if root is not None else self.generation.image_dir
        if root is None:
            return None
        settings = {**asdict(self.generation), "image_dir": None, "pretrained": self.hparams.pretrained,
                    "torch_dtype": self.hparams.torch_dtype}
        weights = {p.key: p.module.weight for p in self.editor.projections}
        return ImageStore(root, self.stage, fingerprint(weights, settings))

    def on_validation_epoch_start(self) -> None:
        self._store = self.image_store()

    on_test_epoch_start = on_validation_epoch_start

    def on_predict_epoch_start(self) -> None:
        """``rece predict`` always saves its images: in ``generation.image_dir`` or ``<default_root_dir>/images``."""
        self._store = self.image_store(self.generation.image_dir or Path(self.trainer.default_root_dir) / "images")
        if self.trainer.is_global_zero:
            print(f"rece: predict writes images to {self._store.folder}")

    def _generate_batch(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        """Images for a batch of prompt rows, reusing those already in the image store."""
        store: ImageStore | None = getattr(self, "_store", None)
        n = len(batch["prompt"])
        rows = batch.get("row", list(range(n)))
        cases = batch.get("case_number", rows)
        images: list[Any] = [None] * n
        if store is not None:
            images = [store.load(r, c) for r, c in zip(rows, cases, strict=True)]
        todo = [i for i in range(n) if images[i] is None]
        if todo:
            guidance = batch.get("guidance")
            fresh = self.generate(
                [batch["prompt"][i] for i in todo],
                [batch["seed"][i] for i in todo],
                None if guidance is None else [guidance[i] for i in todo],
            )
            for i, image in zip(todo, fresh, strict=True):
                images[i] = image
                if store is not None:
                    store.save(image, rows[i], cases[i])
        return {"images": images, "rows": batch, "stage": self.stage, "generated": len(todo)}

    def validation_step(self, batch: dict[str, list[Any]], batch_idx: int) -> dict[str, Any]:
        return self._generate_batch(batch)

    def predict_step(self, batch: dict[str, list[Any]], batch_idx: int) -> dict[str, Any]:
        return self._generate_batch(batch)

    def on_test_start(self) -> None:
        judges = [cb for cb in self.trainer.callbacks if callable(getattr(cb, "judge", None))]
        for attack in self.attacks:
            if hasattr(attack, "judge") and attack.judge is None and judges:
                attack.judge = judges[0].judge

    def test_step(self, batch: dict[str, list[Any]], batch_idx: int) -> dict[str, Any]:
        """Run every attack on the batch's prompt rows and generate from what they found (row seeds).

        Output rows carry ``attack``, ``adversarial_prompt``, ``attack_info`` (JSON) and, for embedding attacks,
        the embedding under ``adversarial_embedding`` so that callbacks can score and save them.
        """
        n = len(batch["prompt"])
        rows = [{key: values[i] for key, values in batch.items()} for i in range(n)]
        images: list[Any] = []
        out_rows: list[dict[str, Any]] = []
        for attack in self.attacks or [NoAttack()]:
            found = attack.run(self, rows)
            images += self.generate(
                [f.prompt for f in found],
                [row["seed"] for row in rows],
                [row.get("guidance") for row in rows],
                prompt_embeds=[f.embedding for f in found],
            )
            for row, f in zip(rows, found, strict=True):
                out_rows.append({**row, "attack": attack.name, "adversarial_prompt": f.prompt,
                                 "attack_info": json.dumps(f.info, default=str), "adversarial_embedding": f.embedding})
        batch_out = {key: [row.get(key) for row in out_rows] for key in out_rows[0]}
        return {"images": images, "rows": batch_out, "stage": self.stage}

    # ------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keys = {f"unet.{p.key}" for p in self.editor.projections}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
        state = self.editor.snapshot()
        checkpoint["rece"] = {
            "stage_index": self.stage_index,
            "maps": {k: v.cpu() for k, v in state["maps"].items()},  # type: ignore[union-attr]
            "layer_weights": None
            if state["layer_weights"] is None
            else {k: v.cpu() for k, v in state["layer_weights"].items()},  # type: ignore[union-attr]
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rece = checkpoint.get("rece")
        state = checkpoint.get("state_dict", {})
        weights = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
        check_kv_weights(self.editor.projections, weights, "checkpoint")
        if rece is not None:
            self.editor.restore_snapshot({"maps": rece["maps"], "layer_weights": rece["layer_weights"]})
            self.stage_index = int(rece["stage_index"])
