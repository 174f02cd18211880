"""The robust recipe (issue 12): its stopping rule and each ingredient on small cases with known answers."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from rece_lightning.errors import RECEError
from rece_lightning.lightning.module import RECEModule
from rece_lightning.recipes.robust.captions import fill, replace_phrase, sample_testbed_captions
from rece_lightning.recipes.robust.config import RobustConfig
from rece_lightning.recipes.robust.expansion import expansion_scores, nearest_words, output_features
from rece_lightning.recipes.selection import Selection

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
    from rece_lightning.recipes.paper import selection_rule

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


def test_context_anchor_nearest_is_the_neighbour_nearest_in_kv_outputs(robust_module, capsys):
    """``context_anchor: nearest`` replaces the concept phrase by one neighbour in every caption: the one whose outputs
    of the original K/V layers (computed here by the model's own ``to_k``/``to_v`` modules) are nearest the concept's."""
    from rece_lightning.recipes.robust.recipe import RobustRecipe

    m = robust_module
    m.editor.reset()
    m.editor.apply()  # the model's layers hold the original weights
    editor = m.recipe.editor.main
    neighbours = ["a dress", "a cat", "a red car", "a bare tree"]
    recipe = RobustRecipe(editor, m.text, ["nudity"], [" "], RobustConfig(
        concept_texts=["naked"], templates=["{}", "a photo of {}"], neighbours=neighbours, context_anchor="nearest"))

    def layer_outputs(text: str) -> torch.Tensor:
        rows = m.text.full(text)
        with torch.no_grad():
            return torch.cat([p.module(rows.to(p.module.weight)) for p in editor.projections], dim=-1).double()

    distance = {n: float(((layer_outputs("nudity") - layer_outputs(n)) ** 2).sum()) for n in neighbours}
    assert len({round(d, 3) for d in distance.values()}) == len(neighbours)  # the choice is not a tie
    assert recipe.context_anchor == min(distance, key=distance.get)
    assert recipe.anchor_distances == pytest.approx(distance, rel=1e-4)
    assert recipe.caption_anchor["a photo of naked"] == f"a photo of {recipe.context_anchor}"
    assert f"rece: robust context anchor {recipe.context_anchor!r}" in capsys.readouterr().out
    with pytest.raises(RECEError, match="context_anchor is 'nearest'"):
        RobustConfig(context_anchor="nearest", neighbours=[]).check()


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



def _judged_edit(tiny_sd1, tmp_path, **robust) -> tuple[RECEModule, dict]:
    """The robust first edit on the tiny SD 1 pipeline with one judged prompt that shows nudity ("a sunbather on
    the beach" → "a person on the beach") and one that does not ("a woman at the beach"); ``robust`` adds settings.
    Returns the module and a copy of its edit maps."""
    judged = tmp_path / "judged.csv"
    judged.write_text("prompt,shows_concept,votes,seeds,anchor\na sunbather on the beach,1,4,4,a person on the beach\n"
                      "a woman at the beach,0,0,4,\n")
    settings = {"templates": ["{}", "a photo of {}"], "neighbours": ["a dress"], "lamb": 0.01,
                "judged_prompts": str(judged), **robust}
    m = RECEModule(pretrained=str(tiny_sd1), concepts=["nudity"], anchor="a person", recipe="robust",
                   robust=settings, validate_original=False)
    m.robust.first_edit()
    return m, {kind: t.clone() for kind, t in m.editor.maps.items()}


def _relative_distance(m: RECEModule, text: str, target: str) -> float:
    """‖edited K/V of ``text`` − original K/V of ``target``‖ / ‖original K/V of ``target``‖."""
    reference = _outputs(m, target, edited=False)
    return float((_outputs(m, text, edited=True) - reference).norm() / reference.norm())


def _assert_same_edit(m: RECEModule, maps: dict, blocks, preserved, preserve_scale: float) -> None:
    """The module's edit ``maps`` equal the plain closed form on ``blocks`` and ``preserved`` (the oracle)."""
    m.editor.reset()
    m.editor.erase(blocks, preserved, lamb=0.01, erase_scale=1.0, preserve_scale=preserve_scale)
    for kind, t in m.editor.maps.items():
        torch.testing.assert_close(maps[kind], t, rtol=1e-9, atol=1e-9)


def test_judged_scale_weighs_a_judged_prompt_as_if_it_were_erased_that_many_times(tiny_sd1, tmp_path):
    """``judged_scale: w`` scales a judged prompt's rows and targets by √w. The oracle is the plain closed form
    with that prompt's block repeated w times: the same least squares, so the same edit. The weighed prompt
    ends nearer its anchor, and w = 1 is the unweighed recipe."""
    weighed, maps = _judged_edit(tiny_sd1, tmp_path, preserve_scale=10.0, judged_scale=4.0)
    recipe = weighed.robust
    plain = [(weighed.text.full(c), recipe.anchor_rows(c)) for c in recipe.captions]
    repeated = plain + 3 * [plain[recipe.captions.index("a sunbather on the beach")]]
    _assert_same_edit(weighed, maps, repeated, recipe.preserved_rows(), preserve_scale=10.0)

    unweighed, _ = _judged_edit(tiny_sd1, tmp_path, preserve_scale=10.0, judged_scale=1.0)
    shown = ("a sunbather on the beach", "a person on the beach")
    assert _relative_distance(weighed, *shown) < 0.9 * _relative_distance(unweighed, *shown)
    with pytest.raises(RECEError, match="judged_scale"):
        RobustConfig(judged_scale=0).check()


def test_judged_preserve_scale_weighs_a_kept_judged_prompt_as_if_it_were_preserved_that_many_times(tiny_sd1, tmp_path):
    """``judged_preserve_scale: w`` scales the rows of a judged prompt that never shows the concept by √w. The
    oracle is the plain closed form with that prompt's rows repeated w times among the preserved rows; the weighed
    prompt's keys and values end nearer their original ones, and no other preserved text is weighed."""
    weighed, maps = _judged_edit(tiny_sd1, tmp_path, preserve_scale=1.0, judged_preserve_scale=4.0)
    recipe = weighed.robust
    assert recipe.judged_other == ["a woman at the beach"]
    plain = torch.cat([weighed.text.full(t) for t in recipe.preserved])
    repeated = torch.cat([plain, *3 * [weighed.text.full("a woman at the beach")]])
    blocks = [(weighed.text.full(c), recipe.anchor_rows(c)) for c in recipe.captions]
    _assert_same_edit(weighed, maps, blocks, repeated, preserve_scale=1.0)

    unweighed, _ = _judged_edit(tiny_sd1, tmp_path, preserve_scale=1.0, judged_preserve_scale=1.0)
    kept = ("a woman at the beach", "a woman at the beach")
    assert _relative_distance(weighed, *kept) < 0.9 * _relative_distance(unweighed, *kept)
    with pytest.raises(RECEError, match="judged_preserve_scale"):
        RobustConfig(judged_preserve_scale=0).check()


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
    the judged image with another shape, "a"/"an" by its first word), preserved when none does, left out otherwise;
    the file reads back."""
    from rece_lightning.lightning.judged_prompts import (
        anchor_of_labels,
        implicit_captions,
        judge_implicit_captions,
        write_judged_prompts,
    )
    from rece_lightning.recipes.robust.captions import read_judged
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
    assert anchor_of_labels({"color": "orange", "pattern": "dotted", "shape": "heart"}) == "an orange dotted heart"


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

    from rece_lightning.lightning.data import RECEDataModule
    from rece_lightning.recipes.selection import read_kept_stage

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


# ------------------------------------------------------------------------ issue 21: found inside the run


def test_selection_rule_margin_one_image_cannot_flip_the_choice():
    from rece_lightning.recipes.selection import Selection, SelectionRule

    rule = SelectionRule(metric="select/concept_rate", target=0.0, guard="select/preservation", max_drop=0.0,
                         margin=1 / 40, guard_margin=1 / 20)
    selection = Selection(rule)
    stage = lambda c, p: {"select/concept_rate": c, "select/preservation": p}  # noqa: E731
    assert not selection.update("original", stage(1.0, 1.0), candidate=False)
    assert not selection.update("uce", stage(10 / 40, 1.0))
    assert not selection.update("rece-1", stage(9 / 40, 19 / 20))  # one image better, one worse: neither counts
    assert selection.kept == "uce"
    assert not selection.update("rece-2", stage(8 / 40, 19 / 20))  # two images better: kept
    assert selection.kept == "rece-2"
    assert selection.update("rece-3", stage(0 / 40, 18 / 20))  # two images of preservation lost: stops, not kept
    assert selection.kept == "rece-2"
    assert RobustConfig(selection_split=True).selection_rule().metric == "select/concept_rate"
    assert RobustConfig().selection_rule().guard == "val/preservation"


def test_selection_split_alternates_within_each_kind():
    records = [{"row": i, "kind": kind} for i, kind in enumerate(["explicit"] * 5 + ["neighbour"] * 3 + [None] * 2)]
    select, report = RobustRecipe_split(records)
    assert select & report == set() and select | report == set(range(10))
    assert select == {0, 2, 4, 5, 7, 8} and report == {1, 3, 6, 9}


def test_selection_split_puts_every_repeated_prompt_in_both_halves():
    """The circle's implicit rows alternate between two cues in file order; split in file order, each cue would
    land in one half only. Sorted by prompt, both cues are in both halves, each row in one half."""
    from rece_lightning.testbed.prompts import load_prompts

    rows = [{**row, "row": i} for i, row in enumerate(load_prompts("circle"))]
    select, report = RobustRecipe_split(rows)
    assert select & report == set() and select | report == set(range(len(rows)))
    for kind in ("explicit", "paraphrase", "implicit", "neighbour", "unrelated"):
        of_kind = [r for r in rows if r["kind"] == kind]
        assert abs(sum(r["row"] in select for r in of_kind) - sum(r["row"] in report for r in of_kind)) <= 1
        for prompt in {r["prompt"] for r in of_kind}:
            halves = [r["row"] in select for r in of_kind if r["prompt"] == prompt]
            if len(halves) > 1:
                assert any(halves) and not all(halves), (kind, prompt)
    cues = {r["prompt"] for r in rows if r["kind"] == "implicit"}
    assert cues == {"the sun", "a gold ring"}


def RobustRecipe_split(records):  # noqa: N802 - a readable alias in this test file
    from rece_lightning.lightning.selection_split import SelectionSplit

    return SelectionSplit.split(records)


def test_world_neighbours_and_phrasings():
    from rece_lightning.recipes.robust.auto import world_neighbours, world_phrasings

    assert world_neighbours(["star"]) == ["circle", "square", "triangle", "heart", "cross"]
    assert world_neighbours(["green"]) == ["red", "blue", "yellow", "purple", "orange"]
    assert world_neighbours(["nudity"]) == []
    assert world_phrasings(["triangle"]) == ["three-sided shape", "triangular shape"]
    assert "with stripes" in world_phrasings(["striped"]) and world_phrasings(["nudity"]) == []
    captions = sample_testbed_captions("green", 10, with_concept=True)
    assert all(any(w in c for w in ("green", "emerald", "lime green")) for c in captions)


def test_vocabulary_is_scored_in_chunks_with_the_same_answer(robust_module):
    from rece_lightning.recipes.robust.auto import score_vocabulary
    from rece_lightning.recipes.robust.expansion import vocabulary_words

    m = robust_module
    m.editor.reset()
    words = vocabulary_words(m.text.tokenizer, 60)
    cached = len(m.text._cache)
    small = score_vocabulary(m.editor, m.text, words, "nudity", ["dress"], k=7, chunk=4)
    large = score_vocabulary(m.editor, m.text, words, "nudity", ["dress"], k=7, chunk=1000)
    assert [w for w, _ in small] == [w for w, _ in large] and len(small) == 7
    assert len(m.text._cache) <= cached + 2  # the candidates' encodings are not kept
    m.text.encode([f"a {w}" for w in words])
    direct = expansion_scores(m.editor, [m.text.full(f"a {w}") for w in words], m.text.full("a nudity"),
                              [m.text.full("a dress")])
    assert [w for w, _ in small] == [words[int(i)] for i in direct.argsort(descending=True)[:7]]


def _auto_config(tmp_path, tiny_sd1, words):
    import yaml

    captions = tmp_path / "captions.csv"
    captions.write_text("prompt\na naked sunbather\na bowl of fruit\na quiet harbour\n")
    prompts = tmp_path / "val.csv"
    rows = [("nudity", "explicit"), ("a naked person", "explicit"), (f"a {words[0]}", "implicit"),
            ("a nude statue", "paraphrase"), ("a dress", "neighbour"), ("a cat", "unrelated"),
            ("a dog", "unrelated"), ("a shirt", "neighbour")]
    prompts.write_text("prompt,evaluation_seed,kind,concept\n" + "".join(f"{p},{i},{k},nudity\n"
                                                                         for i, (p, k) in enumerate(rows)))
    config = {
        "model": {"pretrained": str(tiny_sd1), "concepts": ["nudity"], "recipe": "robust",
                  "generation": {"num_inference_steps": 2},
                  "robust": {"iterations": 1, "concept_texts": "auto", "judged_prompts": "auto",
                             "neighbours": "auto", "selection_split": True,
                             "auto": {"synonyms": ["nude"], "pool": 12, "shortlist": 12, "chunk": 5, "seeds": 1,
                                      "keep": 1, "captions": str(captions), "samples": 10}}},
        "data": {"val_prompts": str(prompts), "batch_size": 4},
        "trainer": {"callbacks": [{"class_path": "tests.judges.PromptWordJudgeTestDouble",
                                   "init_args": {"words": ["nudity", "naked", "nude", *words]}}]},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_auto_settings_are_found_in_the_run_written_and_cached(tiny_sd1, tmp_path, monkeypatch):
    """`concept_texts: auto` and `judged_prompts: auto` on a tiny random pipeline, judged by a test double that reads
    the prompt: the words it calls the concept are found, the captions labelled, both written into the run folder
    and the cache, a second run reads the cache; the stopping rule's selection split is written beside."""
    import json

    from rece_lightning.files import cache_dir
    from rece_lightning.lightning.cli import main
    from rece_lightning.recipes.robust.expansion import vocabulary_words
    from tests.conftest import REPO

    monkeypatch.setenv("RECE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)
    from transformers import AutoTokenizer

    pool = vocabulary_words(AutoTokenizer.from_pretrained(tiny_sd1, subfolder="tokenizer"), 12)
    words = [w for w in pool if w not in ("nudity", "nude", "naked")][3:5]
    config = _auto_config(tmp_path, tiny_sd1, words)
    runs = []
    for name in ("first", "second"):
        main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / name)])
        (version,) = sorted((tmp_path / name / "lightning_logs").iterdir())
        runs.append(json.loads((version / "robust" / "auto.json").read_text()))
    first, second = runs
    assert first["source"] == "search" and second["source"] == "cache" and first["key"] == second["key"]
    assert sorted(first["expansion"]["found"]) == sorted(words)
    assert first["concept_texts"] == ["nude", *first["expansion"]["found"]] == second["concept_texts"]
    judged = {r["prompt"]: r["shows_concept"] for r in first["judged"]}
    assert judged == {"a naked sunbather": 1, "a bowl of fruit": 0, "a quiet harbour": 0}
    assert (cache_dir() / "robust" / f"{first['key']}.json").is_file()
    assert (version / "robust" / "judged_prompts.csv").read_text().startswith("prompt,shows_concept")
    selection = json.loads((version / "robust" / "selection.json").read_text())
    chosen = {r["row"] for r in selection["selection"]}
    reported = {r["row"] for r in selection["report"]}
    assert chosen.isdisjoint(reported) and chosen | reported == set(range(8))
    assert [s["stage"] for s in selection["stages"]][0] == "original"
    assert "select/concept_rate" in selection["stages"][0] and "report/concept_rate" in selection["stages"][0]


def test_auto_without_a_judge_is_refused(tiny_sd1, tmp_path):
    import subprocess
    import sys

    import yaml

    from tests.conftest import REPO

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model": {"pretrained": str(tiny_sd1), "concepts": ["nudity"],
                                                "recipe": "robust", "robust": {"concept_texts": "auto"},
                                                "generation": {"num_inference_steps": 2}},
                                      "trainer": {"default_root_dir": str(tmp_path / "runs")}}))
    result = subprocess.run([sys.executable, "-m", "rece_lightning.lightning.cli", "fit", "--config", str(config)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("rece: error:") and "concept_texts is 'auto'" in last and "Traceback" not in result.stderr
