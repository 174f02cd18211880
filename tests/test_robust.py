"""The robust recipe (issue 12): its stopping rule and each ingredient on small cases with known answers."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from rece_lightning.errors import RECEError
from rece_lightning.module import RECEModule
from rece_lightning.robust import (
    RobustConfig,
    expansion_scores,
    fill,
    nearest_words,
    output_features,
    replace_phrase,
    sample_testbed_captions,
)
from rece_lightning.selection import Selection

# ------------------------------------------------------------------------------------------ stopping rule


def _rule(target: float, max_drop: float) -> Selection:
    return Selection(RobustConfig(stop_concept_rate=target, stop_preservation_drop=max_drop).selection_rule())


def _update(selection: Selection, stage: str, rate: float, kept: float, candidate: bool = True) -> bool:
    return selection.update(stage, {"val/concept_rate": rate, "val/preservation": kept}, candidate=candidate)


def test_stopping_rule_keeps_the_lowest_rate_before_preservation_falls():
    rule = _rule(target=0.0, max_drop=0.02)
    assert not _update(rule, "original", 1.0, 1.00, candidate=False)  # the original: reference only
    assert rule.kept is None and rule.reference == 1.0
    assert not _update(rule, "uce", 0.30, 0.99)
    assert not _update(rule, "rece-1", 0.10, 0.985)
    assert rule.kept == "rece-1"
    assert _update(rule, "rece-2", 0.02, 0.95)  # preservation fell by 5 points: stop, and rece-2 is not kept
    assert rule.kept == "rece-1" and rule.score == pytest.approx(0.10)
    assert "val/preservation fell to 0.95 at rece-2" in rule.reason() and "rece-2 is not kept" in rule.reason()


def test_stopping_rule_stops_at_the_target_and_keeps_the_earlier_stage_on_ties():
    rule = _rule(target=0.05, max_drop=0.02)
    assert not _update(rule, "uce", 0.2, 0.9)  # no original validated: the first stage is the reference
    assert not _update(rule, "rece-1", 0.2, 0.9)
    assert rule.kept == "uce"  # tie: the earlier stage
    assert _update(rule, "rece-2", 0.04, 0.89)  # target reached, preservation within the tolerance
    assert rule.kept == "rece-2" and "reached the target 0.05 at rece-2" in rule.stopped


def test_selection_state_round_trips_and_continues():
    """A resumed run continues the selection where the checkpoint left it (reference, kept stage, history)."""
    first = _rule(target=0.0, max_drop=0.02)
    _update(first, "original", 1.0, 1.0, candidate=False)
    _update(first, "uce", 0.3, 0.99)
    resumed = _rule(target=0.0, max_drop=0.02)
    resumed.load_state_dict(first.state_dict())
    assert _update(resumed, "rece-1", 0.1, 0.97)  # 3 points below the original's preservation: stop
    assert resumed.kept == "uce" and [e["stage"] for e in resumed.history] == ["original", "uce", "rece-1"]


def test_keep_best_composes_with_the_robust_rule_or_is_refused():
    from rece_lightning.recipe import selection_rule

    rule = selection_rule("robust", "val/nudity_rate", "min", RobustConfig(concept_metric="val/nudity_rate"))
    assert rule.metric == "val/nudity_rate" and rule.guard == "val/preservation" and rule.target == 0.0
    assert selection_rule("robust", None, "max", RobustConfig()).mode == "max"  # keep_best_mode sets the mode
    with pytest.raises(RECEError, match="differs from robust.concept_metric"):
        selection_rule("robust", "val/nudity_rate", "min", RobustConfig())
    assert selection_rule("paper", None) is None
    assert selection_rule("paper", "val/score", "max").guard is None


# --------------------------------------------------------------------------------------------- texts


def test_fill_and_replace_phrase():
    assert fill(["{}", "a red {}"], ["triangle", "three-sided shape"]) == [
        "triangle", "a red triangle", "three-sided shape", "a red three-sided shape"]
    phrases = ["triangle", "three-sided shape", "triangular shape"]
    assert replace_phrase("a big three-sided shape in red", phrases, "circle") == "a big circle in red"
    assert replace_phrase("a red triangle on gray", phrases, "") == "a red on gray"
    assert replace_phrase("triangles everywhere", phrases, "x") is None  # word-bounded
    assert replace_phrase("a red square", phrases, "x") is None


def test_testbed_captions_show_the_concept_or_not():
    with_concept = sample_testbed_captions("triangle", 40, with_concept=True)
    without = sample_testbed_captions("triangle", 40, with_concept=False)
    words = ("triangle", "three-sided shape", "triangular shape")
    assert all(any(w in c for w in words) for c in with_concept)
    assert not any(any(w in c for w in words) for c in without)
    striped = sample_testbed_captions("striped", 20, with_concept=True)
    assert all(any(w in c for w in ("striped", "stripy", "banded", "stripes")) for c in striped)
    with pytest.raises(RECEError):
        sample_testbed_captions("nudity", 3, with_concept=True)


def test_config_is_checked():
    with pytest.raises(RECEError):
        RobustConfig(templates=["no slot"]).check()
    with pytest.raises(RECEError):
        RobustConfig(gammas=[]).check()


# ------------------------------------------------------------------------------ ingredients on the tiny model


@pytest.fixture(scope="module")
def robust_module(tiny_sd1):
    return RECEModule(pretrained=str(tiny_sd1), concepts=["nudity"], generation={"num_inference_steps": 2},
                      recipe="robust",
                      robust={"iterations": 2, "concept_texts": ["naked"], "templates": ["{}", "a photo of {}"],
                              "neighbours": ["a dress", "a cat"], "context_anchor": "a clothed person",
                              "preserve_scale": 10.0, "erase_scale": 10.0, "lamb": 0.01})


def _outputs(module, text: str, edited: bool):
    return output_features(module.editor, module.text.full(text), edited=edited)


def test_first_edit_maps_captions_to_their_context_anchor_and_keeps_neighbours(robust_module):
    m = robust_module
    m.editor.reset()
    recipe = m.robust
    assert recipe.caption_anchor["a photo of naked"] == "a photo of a clothed person"
    recipe.first_edit()
    for caption in ("nudity", "a photo of naked"):
        target = _outputs(m, recipe.caption_anchor[caption], edited=False)
        before = (_outputs(m, caption, edited=False) - target).norm()
        after = (_outputs(m, caption, edited=True) - target).norm()
        assert after < 0.7 * before  # 4 captions × 77 rows in a narrow space: a least-squares fit
    for kept in ("a dress", "a photo of a cat"):
        change = (_outputs(m, kept, True) - _outputs(m, kept, False)).norm() / _outputs(m, kept, False).norm()
        assert change < 0.15  # preserved at scale 10 (the erased captions move by ~50 %)


def test_iteration_erases_the_derived_embeddings(robust_module):
    m = robust_module
    m.editor.reset()
    recipe = m.robust
    recipe.first_edit()
    derived = m.editor.derive([m.text.full("nudity")], gamma=0.1)[0]
    target = _outputs(m, "nudity", edited=False)

    def regeneration_error() -> float:
        return float((output_features(m.editor, derived, edited=True) - target).norm() / target.norm())

    before = regeneration_error()
    recipe.iteration()
    assert regeneration_error() > before  # the derived embedding no longer regenerates the concept as well


def test_judged_prompts_are_erased_or_preserved(tiny_sd1, tmp_path):
    """A judged corpus: the prompts that show the concept are erased towards their anchor in the file, else the
    concept's anchor (they name no phrase to replace), the others preserved; a bad file is refused."""
    judged = tmp_path / "judged.csv"
    judged.write_text("prompt,shows_concept,votes,seeds,anchor\na sunbather on the beach,1,4,4,\n"
                      "a life drawing class,1,3,4,a drawing class\na bowl of fruit,0,0,4,\n")
    settings = {"neighbours": ["a dress"], "preserve_scale": 10.0, "erase_scale": 10.0, "lamb": 0.01,
                "judged_prompts": str(judged)}
    m = RECEModule(pretrained=str(tiny_sd1), concepts=["nudity"], anchor="a person", recipe="robust",
                   robust=settings, validate_original=False)
    recipe = m.robust
    assert "a sunbather on the beach" in recipe.captions and recipe.anchor_of("a sunbather on the beach") == "a person"
    assert recipe.anchor_of("a life drawing class") == "a drawing class"  # the file's anchor
    assert "a bowl of fruit" in recipe.preserved and "a bowl of fruit" not in recipe.captions
    recipe.first_edit()
    target = _outputs(m, "a person", edited=False)
    before = (_outputs(m, "a sunbather on the beach", edited=False) - target).norm()
    assert (_outputs(m, "a sunbather on the beach", edited=True) - target).norm() < 0.7 * before
    fruit = _outputs(m, "a bowl of fruit", edited=False)
    assert (_outputs(m, "a bowl of fruit", edited=True) - fruit).norm() / fruit.norm() < 0.15
    for text, message in (("prompt,votes\na,1\n", "shows_concept"), ("prompt,shows_concept\na,yes\n", "0 or 1")):
        judged.write_text(text)
        with pytest.raises(RECEError, match=message):
            RECEModule(pretrained=str(tiny_sd1), concepts=["nudity"], recipe="robust", robust=settings,
                       validate_original=False)
    with pytest.raises(RECEError, match="does not exist"):
        RobustConfig(judged_prompts=str(tmp_path / "missing.csv")).check()


def test_module_runs_the_robust_stages(robust_module):
    m = robust_module
    assert m.hparams.recipe == "robust" and m.hparams.robust["iterations"] == 2
    assert m.stages == ["original", "uce", "rece-1", "rece-2"]
    m.editor.reset()
    m.recipe.stage = "original"
    editor = m.erase()
    assert editor.edit_rank() > 0


def test_expansion_scores_know_the_concept_from_its_neighbours(robust_module):
    m = robust_module
    m.editor.reset()
    texts = ["nudity", "a dress", "a cat"]
    m.text.encode(texts)
    scores = expansion_scores(m.editor, [m.text.full(t) for t in texts], m.text.full("nudity"),
                              [m.text.full("a dress"), m.text.full("a cat")])
    assert scores[0] > 0  # the concept itself is closest to the concept
    assert scores[1] <= 0 and scores[2] <= 0  # a neighbour is at least as close to itself as to the concept


def test_nearest_words_excludes_what_it_is_told(robust_module):
    m = robust_module
    words = nearest_words(m.text.tokenizer, m.text.text_encoder, ["cat"], 5, exclude=["cat", "cats"])
    assert len(words) == 5 and "cat" not in words and "cats" not in words
    table = m.text.text_encoder.get_input_embeddings().weight
    assert table.shape[0] >= 5


def test_paper_recipe_is_the_default(tiny_sd1):
    m = RECEModule(pretrained=str(tiny_sd1), concepts=["nudity"], generation={"num_inference_steps": 2})
    assert m.hparams.recipe == "paper" and m.robust is None and m.selection is None
    assert m.stages == ["original", "uce", "rece-1", "rece-2", "rece-3"]


def test_judged_prompt_writer_labels_captions_by_the_judge_and_round_trips(tmp_path):
    """The package's judged-prompt writer: a caption is erased when ≥ keep of its images show the concept (anchor:
    the judged image with another shape), preserved when none does, left out otherwise; the file reads back."""
    from rece_lightning.judged_prompts import implicit_captions, judge_implicit_captions, write_judged_prompts
    from rece_lightning.robust import read_judged
    from rece_lightning.testbed.render import render
    from rece_lightning.testbed.world import SHAPES, Scene

    captions = implicit_captions(12, seed=7)
    shown, ambiguous = captions[0], captions[1]
    drawn: list[str] = []

    def generate(prompts: list[str], seeds: list[int]):  # a deterministic stand-in for the model: renders scenes
        images = []
        for prompt in prompts:
            triangle = prompt == shown or (prompt == ambiguous and drawn.count(prompt) == 0)
            drawn.append(prompt)
            images.append(render(Scene("triangle" if triangle else "circle", "red", "solid", "white")))
        return images

    rows = judge_implicit_captions(generate, "triangle", samples=12, seeds=2, keep=2, sample_seed=7, batch=5)
    by_prompt = {r.prompt: r for r in rows}
    assert ambiguous not in by_prompt and len(rows) == len(captions) - 1
    other = next(s for s in SHAPES if s != "triangle")
    assert by_prompt[shown].shows_concept and by_prompt[shown].votes == 2
    assert by_prompt[shown].anchor == f"a red solid {other}"
    assert not any(r.shows_concept for r in rows if r.prompt != shown)
    erased, preserved = read_judged(str(write_judged_prompts(tmp_path / "judged.csv", rows)))
    assert erased == {shown: f"a red solid {other}"} and set(preserved) == set(by_prompt) - {shown}


class _RobustMetrics(L.Callback):
    """Logs made-up validation metrics per stage: rece-1 loses 10 points of preservation."""

    VALUES = {"original": (1.0, 1.0), "uce": (0.3, 1.0), "rece-1": (0.1, 0.9), "rece-2": (0.0, 1.0)}

    def on_validation_epoch_end(self, trainer, pl_module):
        rate, kept = self.VALUES[pl_module.stage]
        pl_module.log("val/concept_rate", rate)
        pl_module.log("val/preservation", kept)


def test_stopping_rule_drives_the_module_loop_and_writes_the_kept_stage(tiny_sd1, small_prompts, tmp_path):
    """The robust rule, read by the module after each stage: the loop ends when preservation falls, the kept stage
    (uce) is restored and ``kept_stage.json`` names it and why; the checkpoints carry the selection."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from rece_lightning.data import RECEDataModule
    from rece_lightning.selection import read_kept_stage

    module = RECEModule(pretrained=str(tiny_sd1), concepts=["nudity"], generation={"num_inference_steps": 1},
                        recipe="robust", keep_best="val/concept_rate", robust={"iterations": 2})
    logger = TensorBoardLogger(tmp_path, name="logs", version=0)
    trainer = L.Trainer(max_epochs=len(module.stages), callbacks=[_RobustMetrics(), ModelCheckpoint(
        save_top_k=-1, filename="stage-{epoch}")], logger=logger, enable_progress_bar=False, num_sanity_val_steps=0)
    trainer.fit(module, RECEDataModule(val_prompts=str(small_prompts), limit=1))
    assert trainer.current_epoch == 3  # original, uce, rece-1: rece-2 never ran
    assert module.stage == "uce"
    kept = read_kept_stage(logger.log_dir)
    assert kept["stage"] == "uce" and kept["score"] == pytest.approx(0.3)
    assert "val/preservation fell to 0.9 at rece-1" in kept["reason"] and kept["rule"]["max_drop"] == 0.02
    assert [e["stage"] for e in kept["history"]] == ["original", "uce", "rece-1"]
    last = torch.load(Path(logger.log_dir) / "checkpoints" / "stage-epoch=2.ckpt", weights_only=True)
    assert last["rece"]["selection"]["kept"] == "uce" and last["rece"]["best"]["stage"] == "uce"
