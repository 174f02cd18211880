"""RECE as a LightningModule: each training epoch is one closed-form stage, each validation generates images.

The recipe itself is :class:`~rece_lightning.recipes.paper.Recipe` (framework-free); this module is its Lightning shell:

* stages as epochs — ``original`` (no edit; validated so that every run reports its own baseline, optional), then
  the recipe's stages ``uce``, ``rece-1`` … (each one closed-form edit, see :mod:`rece_lightning.recipes.paper`);
* validation, test (red-teaming) and predict generate images with each prompt row's own seed;
* keep-best: after fit the edited stage chosen by the run's selection rule (:mod:`rece_lightning.recipes.selection`: a
  logged metric, or the robust recipe's stopping rule) is kept, and ``<run>/kept_stage.json`` says which and why;
* checkpoints hold only the edited text-reading weights, the edit state, a SHA-256 of both and a fingerprint of the
  base model's original weights (checked when ``--ckpt_path`` restores them), never a multi-GB copy of the pipeline.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from rece_lightning.artefacts.eval_cache import model_identity
from rece_lightning.artefacts.image_store import ImageStore, fingerprint
from rece_lightning.attacks import Attack, AttackTarget, NoAttack
from rece_lightning.files import tensor_sha256
from rece_lightning.lightning.callbacks.cached import evaluation_reused
from rece_lightning.lightning.callbacks.console import say
from rece_lightning.lightning.callbacks.metric import judges as metric_judges
from rece_lightning.lightning.checkpoint import Best, load_edit, save_edit
from rece_lightning.maths.closed_form import Technique
from rece_lightning.maths.spaces import SpacedEditor
from rece_lightning.models.family import ModelFamily
from rece_lightning.models.generation import generate
from rece_lightning.models.pipeline import attach_denoiser, load_family, resolve_dtype
from rece_lightning.models.source import TESTBED
from rece_lightning.models.text import TextEncoder
from rece_lightning.recipes.config import GenerationConfig, RECEConfig, UCEConfig, as_config, check_choice
from rece_lightning.recipes.paper import ORIGINAL, Recipe, read_preserve_csv, selection_rule
from rece_lightning.recipes.robust.config import RobustConfig
from rece_lightning.recipes.selection import Selection, write_kept_stage

__all__ = ["ClosedFormStep", "RECEModule"]


class ClosedFormStep(torch.optim.Optimizer):
    """The "optimizer" of a closed-form method: ``step(closure)`` runs one edit stage on the K/V weights.

    Making each edit an optimizer step keeps Lightning's step counting (``global_step``, checkpointing, logging)
    meaningful although nothing is trained.
    """

    def __init__(self, params) -> None:
        super().__init__(params, defaults={})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """Run the stage (the closure); there are no gradients to apply."""
        return None if closure is None else closure()


class RECEModule(L.LightningModule):
    """Reliable and Efficient Concept Erasure (Gong et al., ECCV 2024) of a Stable Diffusion pipeline, in Lightning.

    Args:
        pretrained: a local diffusers pipeline folder, a Hugging Face Hub id (``org/name`` or ``org/name@revision``,
            from the user's Hugging Face cache, downloaded there when online), or ``"testbed"`` (the embedded default
            model).
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
            ``None`` keeps the last stage. Under ``recipe: robust`` it must name ``robust.concept_metric`` (the
            stopping rule's metric, see :func:`~rece_lightning.recipes.paper.selection_rule`) or be ``None``.
        keep_best_mode: ``min`` or ``max``.
        torch_dtype: dtype of the pipeline (``float16`` on GPUs); the maths always runs in float64.
        attacks: red-teaming attacks run by ``rece test`` on the test prompts (default: no attack). Each is recorded
            by name; attacks that stop early on success (UnlearnDiffAtk) are given the judge of the first evaluation
            callback that can judge images.
        recipe: ``paper`` (UCE + RECE as published, the default) or ``robust`` (opt-in, :mod:`rece_lightning.recipes.robust.recipe`:
            the ``uce`` stage erases caption sets, each ``rece-N`` stage many derivations, a stopping rule on the
            validation metrics ends the iterations and chooses the kept stage; ``uce`` and ``rece`` are then unused).
            Both recipes' stage lists come from :func:`~rece_lightning.recipes.paper.stage_names` (the ``rece`` command sets
            ``trainer.max_epochs`` from it).
        robust: settings of the robust recipe (:class:`~rece_lightning.recipes.robust.config.RobustConfig`).
        max_sequence_length: Flux, SD3, PixArt-Σ and SANA only: tokens per text (``None`` = the pipeline's
            default: 512 for ``FluxPipeline``, 256 for FLUX.1-schnell; 256 for ``StableDiffusion3Pipeline``; 300 for
            ``PixArtSigmaPipeline`` and ``SanaPipeline``), used for erasing and generating alike.

    The model is loaded by family (:mod:`rece_lightning.models.family`): at first only the text encoders and the
    denoiser's text-reading layers (:func:`~rece_lightning.models.pipeline.load_family`); the denoiser and the VAE are
    loaded when a stage generates images (:meth:`load_denoiser`), so ``rece fit`` without validation never holds
    them in memory.
    """

    def __init__(
        self,
        pretrained: str = TESTBED,
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
        max_sequence_length: int | None = None,
        recipe: Literal["paper", "robust"] = "paper",
        robust: RobustConfig = RobustConfig(),  # noqa: B008
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold the K/V weights only
        uce_config, rece_config = as_config(uce, UCEConfig), as_config(rece, RECEConfig)
        self.generation: GenerationConfig = as_config(generation, GenerationConfig)
        check_choice("model.keep_best_mode", keep_best_mode, ("min", "max"))
        resolve_dtype(torch_dtype)
        robust_config = robust if isinstance(robust, RobustConfig) else RobustConfig(**(robust or {}))
        rule = selection_rule(recipe, keep_best, keep_best_mode, robust_config)
        extra = read_preserve_csv(preserve_csv, preserve_csv_column) if preserve_csv else []
        self.save_hyperparameters(
            {
                "pretrained": pretrained,
                "concepts": concepts,
                "anchor": anchor,
                "uce": asdict(uce_config),
                "rece": asdict(rece_config),
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
                "max_sequence_length": max_sequence_length,
                "recipe": recipe,
                "robust": asdict(robust_config) if isinstance(robust, RobustConfig) else dict(robust or {}),
            }
        )
        self.attacks: list[Attack] = list(attacks or [])
        # every setting is checked before the (slow) pipeline load
        Recipe.check_settings(concepts or [], anchor, uce_config, rece_config, technique)

        # the model family: the text side now, the denoiser when a stage generates (load_denoiser)
        self.family: ModelFamily = load_family(pretrained, torch_dtype, max_sequence_length=max_sequence_length)
        self._text_side_suffices = False  # set by setup() for a fit that generates nothing
        self.recipe = Recipe(self.family, concepts or [], anchor, uce_config, rece_config, extra_preserve=extra,
                             with_to_k=with_to_k, technique=technique, method=recipe, robust=robust_config)
        self.robust = self.recipe.robust  # the opt-in robust recipe
        self._register_components()
        self.stages: list[str] = ([ORIGINAL] if validate_original else []) + self.recipe.stages
        self.selection: Selection | None = Selection(rule) if rule is not None else None  # chooses the kept stage
        self._split: Any = None  # the robust recipe's selection split (robust.selection_split)
        self._best: Best | None = None  # the kept stage's score, name and edit state
        self._identity: dict[str, Any] | None = None  # the model's identity in the evaluation cache's keys
        self._reuse = False  # this validation epoch reuses cached results: nothing to generate
        self._resumed_after: int | None = None  # index of the last stage restored by --ckpt_path, if any

    # ------------------------------------------------------------------------------------ the model family
    def _register_components(self) -> None:
        """Register the pipeline's modules (and the denoiser or its stand-in) so that Lightning moves them."""
        pipe = self.family.pipeline
        pipe.set_progress_bar_config(disable=True)
        modules = {name: c for name, c in pipe.components.items() if isinstance(c, nn.Module)}
        modules[self.family.denoiser_name] = self.family.denoiser
        for name, module in modules.items():
            module.requires_grad_(False).eval()
            setattr(self, name, module.to(self.device))

    @property
    def pipeline(self):
        """The diffusers pipeline, whole: loaded on first use unless this run only erases (see :meth:`setup`)."""
        if not self._text_side_suffices:
            self.load_denoiser()
        return self.family.pipeline

    def load_denoiser(self) -> None:
        """Load the denoiser and VAE around the text side already loaded (once), with the edit already in place."""
        if self.family.text_only:
            attach_denoiser(self.family, self.hparams.pretrained, self.hparams.torch_dtype)
            self._register_components()

    def setup(self, stage: str) -> None:
        """Load the whole pipeline unless this run generates nothing (``rece fit`` without validation prompts and
        without the ``pipeline`` export only erases: text encoders and text-reading layers suffice)."""
        self._text_side_suffices = stage == "fit" and not self._fit_generates()
        if not self._text_side_suffices:
            self.load_denoiser()

    def teardown(self, stage: str) -> None:
        self._text_side_suffices = False

    def _fit_generates(self) -> bool:
        trainer = self.trainer
        if any("pipeline" in (getattr(cb, "formats", None) or ()) for cb in trainer.callbacks):
            return True
        if trainer.limit_val_batches == 0:
            return False
        datamodule = trainer.datamodule
        if datamodule is None:
            return True  # dataloaders given directly: assume validation
        loaders = datamodule.val_dataloader()
        return bool(loaders) if isinstance(loaders, list | tuple) else True

    # ------------------------------------------------------------------------------------------ the recipe
    @property
    def editor(self) -> SpacedEditor:
        """The recipe's editor of the text-reading layers."""
        return self.recipe.editor

    @property
    def text(self) -> TextEncoder:
        """The recipe's text encoder (the model family's text side)."""
        return self.recipe.text

    @property
    def stage(self) -> str:
        """The last stage run (``"original"`` before any edit)."""
        return self.recipe.stage

    @property
    def stage_index(self) -> int:
        """Index of :attr:`stage` in :attr:`stages` (``-1`` before any stage when the original is not a stage)."""
        return self.stages.index(self.stage) if self.stage in self.stages else -1

    def run_stage(self, index: int, apply: bool = True) -> None:
        """Run stage ``index`` of :attr:`stages` on top of the previous ones; fold it into the UNet if ``apply``."""
        name = self.stages[index]
        if name != ORIGINAL:
            self.recipe.run(name, apply=apply)

    def erase(self) -> SpacedEditor:
        """The whole recipe without a Trainer (see :func:`rece_lightning.erase` for the framework-free use)."""
        return self.recipe.erase()

    # -------------------------------------------------------------------------------------- Lightning
    def configure_optimizers(self) -> ClosedFormStep:
        return ClosedFormStep([p.module.weight for p in self.editor.projections])

    def on_fit_start(self) -> None:
        self.editor.to(self.device)
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and 0 <= max_epochs < len(self.stages):
            rank_zero_warn(f"trainer.max_epochs={max_epochs} runs only {self.stages[:max_epochs]} of the recipe's "
                           f"stages {self.stages}; leave max_epochs unset (rece sets it from the stage list)")
        if self.robust is not None and not self.robust.built:  # its `auto` settings, found on the original model
            from rece_lightning.lightning.callbacks.run import run_dir
            from rece_lightning.lightning.judged_prompts import judge_implicit_captions, write_judged_prompts

            found = metric_judges(self.trainer.callbacks)
            judge = found[0] if found else None
            if judge is not None:
                judge.prepare(self)
                judge.device = self.device
            about = {"pretrained": str(self.hparams.pretrained), "family": type(self.family).__name__}
            self.robust.prepare(self.generate, judge, run_dir(self.trainer) / "robust", about,
                                judge_implicit_captions, write_judged_prompts)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        index = self.current_epoch
        if index >= len(self.stages):
            self.trainer.should_stop = True
            return None
        self.optimizers().step(closure=lambda: self.run_stage(index))
        self.log("rece/stage", float(index), on_step=False, on_epoch=True, batch_size=1, rank_zero_only=True)
        if self.stage != ORIGINAL:
            self.log("rece/relative_change", self.editor.relative_change(), on_step=False, on_epoch=True, batch_size=1,
                     rank_zero_only=True)
        return None

    def on_train_epoch_end(self) -> None:
        """Feed the selection rule the stage's validation metrics, hold the kept stage's edit, and end the loop
        when the rule says so or no stage is left."""
        stop = False
        if self.selection is not None:
            before = self.selection.kept
            metrics = self.trainer.callback_metrics
            if self.robust is not None and self.robust.config.selection_split:  # the robust selection split
                from rece_lightning.lightning.selection_split import SelectionSplit

                if self._split is None:
                    self._split = SelectionSplit(self.robust.config.stop_margin_images)
                metrics = {**metrics, **self._split.update(self, self.selection)}
            stop = self.selection.update(self.stage, metrics, candidate=self.stage != ORIGINAL)
            if self.selection.kept != before:
                self._best = (float(self.selection.score), self.stage, self.editor.snapshot())  # type: ignore[arg-type]
            if stop and self.trainer.is_global_zero:
                say(f"rece: {self.selection.stopped}")
        if stop or self.stage_index >= len(self.stages) - 1:
            self.trainer.should_stop = True

    def on_train_end(self) -> None:
        """Restore the kept stage and write ``<run>/kept_stage.json`` (rank zero)."""
        if self._best is not None:
            score, stage, state = self._best
            self.recipe.restore(stage, state)
            metric = self.selection.rule.metric if self.selection is not None else self.hparams.keep_best
            resumed = self._resumed_after
            over = (f", chosen over all {len(self.stages)} stages, the {resumed + 1} before the resume included"
                    if resumed is not None else "")
            if self.trainer.is_global_zero:
                say(f"rece: kept stage {stage!r} ({metric} = {score:.4g}){over}")
        if self.trainer.is_global_zero and self.trainer.logger is not None and self.trainer.logger.log_dir:
            write_kept_stage(self.trainer.logger.log_dir, self.kept_stage())

    def kept_stage(self) -> dict[str, Any]:
        """The record of the kept stage (:mod:`rece_lightning.recipes.selection`): the stage, its score, the rule and why."""
        if self.selection is not None:
            record = self.selection.record(self.stages)
            if record["stage"] is None:  # no candidate was validated: the last stage run stays
                record["stage"] = self.stage
            return record
        return {"stage": self.stage, "score": None, "rule": None, "stopped": None, "stages": list(self.stages),
                "reason": "no selection rule (model.keep_best is unset): the last stage run is kept", "history": []}

    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        guidance: list[float | None] | None = None,
        prompt_embeds: list[Tensor | None] | None = None,
        pooled_embeds: list[Tensor | None] | None = None,
    ):
        """Images of the current model state, one per prompt (or per embedding, with its own pooled embedding where
        given), each from its own seed."""
        g = self.generation
        self.load_denoiser()
        return generate(
            self.family.pipeline,
            prompts,
            seeds,
            num_inference_steps=g.num_inference_steps,
            guidance_scale=g.guidance_scale,
            guidance=guidance,
            height=g.height,
            width=g.width,
            prompt_embeds=prompt_embeds,
            extra=self.family.generation_kwargs(),
            pooled_embeds=pooled_embeds,
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

    def evaluation_identity(self) -> dict[str, Any]:
        """What this model state's images depend on besides the prompt rows, for the evaluation cache's keys
        (:mod:`rece_lightning.artefacts.eval_cache`): the text-reading weights' SHA-256 as edited (not the stage's name), the
        model's identity, the generation settings, the scheduler and the device kind."""
        if self._identity is None:
            self._identity = {"model": model_identity(self.hparams.pretrained, self.hparams.torch_dtype),
                              "family": type(self.family).__name__, "options": self.family.generation_kwargs()}
        scheduler = getattr(self.family.pipeline, "scheduler", None)
        return {
            **self._identity,
            "text_layers": tensor_sha256({p.key: p.module.weight for p in self.editor.projections}),
            "generation": {**asdict(self.generation), "image_dir": None},
            "scheduler": None if scheduler is None else [type(scheduler).__name__, dict(scheduler.config)],
            "device": self.device.type,
        }

    def on_validation_epoch_start(self) -> None:
        self._store = self.image_store()
        self._reuse = evaluation_reused(self.trainer, self.stage)  # (the callbacks' hooks ran first: they know their hits)

    def on_test_epoch_start(self) -> None:
        self._store = self.image_store()

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
        if self._reuse:  # every callback reading the images reuses its cached result
            return {"rows": batch, "stage": self.stage, "generated": 0}
        return self._generate_batch(batch)

    def predict_step(self, batch: dict[str, list[Any]], batch_idx: int) -> dict[str, Any]:
        return self._generate_batch(batch)

    def on_test_start(self) -> None:
        judges = metric_judges(self.trainer.callbacks)
        self.attack_target = AttackTarget(self.pipeline, self.text, self.editor, self.generation,
                                          judge=judges[0].judge if judges else None,
                                          pipeline_kwargs=dict(self.family.generation_kwargs()), family=self.family)

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
            found = attack.run(self.attack_target, rows)
            images += self.generate(
                [f.prompt for f in found],
                [row["seed"] for row in rows],
                [row.get("guidance") for row in rows],
                prompt_embeds=[f.embedding for f in found],
                pooled_embeds=[f.pooled for f in found],
            )
            for row, f in zip(rows, found, strict=True):
                out_rows.append({**row, "attack": attack.name, "adversarial_prompt": f.prompt,
                                 "attack_info": json.dumps(f.info, default=str), "adversarial_embedding": f.embedding})
        batch_out = {key: [row.get(key) for row in out_rows] for key in out_rows[0]}
        return {"images": images, "rows": batch_out, "stage": self.stage}

    # ------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_edit(checkpoint, self.recipe, self.family.denoiser_name, self._best)
        if self.selection is not None:
            checkpoint["rece"]["selection"] = self.selection.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._best = load_edit(checkpoint, self.recipe, self.family.denoiser_name)
        if self.selection is not None:
            saved = checkpoint["rece"].get("selection")
            if saved is not None:
                self.selection.load_state_dict(saved)
            elif self._best is not None:  # a checkpoint written before the selection state was saved
                self.selection.kept, self.selection.score = self._best[1], self._best[0]
        self._resumed_after = self.stage_index  # the stages up to this one ran before the resume
