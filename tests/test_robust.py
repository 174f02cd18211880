"""The robust recipe (issue 12): its stopping rule and each ingredient on small cases with known answers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rece_lightning.errors import RECEError
from rece_lightning.module import RECEModule
from rece_lightning.robust import (
    RobustConfig,
    StoppingRule,
    expansion_scores,
    fill,
    nearest_words,
    output_features,
    replace_phrase,
    sample_testbed_captions,
)

# ------------------------------------------------------------------------------------------ stopping rule


def test_stopping_rule_keeps_the_lowest_rate_before_preservation_falls():
    rule = StoppingRule(target=0.0, max_drop=0.02)
    assert not rule.update(0, 1.0, 1.00, candidate=False)  # the original: reference only
    assert rule.keep is None and rule.reference == 1.0
    assert not rule.update(1, 0.30, 0.99)
    assert not rule.update(2, 0.10, 0.985)
    assert rule.keep == 2
    assert rule.update(3, 0.02, 0.95)  # preservation fell by 5 points: stop, and stage 3 is not kept
    assert rule.keep == 2


def test_stopping_rule_stops_at_the_target_and_keeps_the_earlier_stage_on_ties():
    rule = StoppingRule(target=0.05, max_drop=0.02)
    assert not rule.update(0, 0.2, 0.9)  # no original validated: the first stage is the reference
    assert not rule.update(1, 0.2, 0.9)
    assert rule.keep == 0  # tie: the earlier stage
    assert rule.update(2, 0.04, 0.89)  # target reached, preservation within the tolerance
    assert rule.keep == 2


def test_stopping_rule_drives_the_module_loop():
    """``RobustRecipe.epoch_end`` with a stand-in module: snapshots the kept stage and stops the trainer."""
    from rece_lightning.robust import RobustRecipe

    class Editor:
        def __init__(self):
            self.calls = 0

        def snapshot(self):
            self.calls += 1
            return {"stage": self.calls}

    recipe = RobustRecipe.__new__(RobustRecipe)
    recipe.config, recipe.editor = RobustConfig(stop_preservation_drop=0.02), Editor()
    module = SimpleNamespace(stopping=recipe.stopping_rule(), stages=["original", "uce", "rece-1", "rece-2"],
                             _best=None, trainer=SimpleNamespace(callback_metrics={}, should_stop=False))
    metrics = [(1.0, 1.0), (0.3, 1.0), (0.1, 0.9), (0.0, 1.0)]
    for index, (rate, kept) in enumerate(metrics):
        module.stage_index, module.stage = index, module.stages[index]
        module.trainer.callback_metrics = {"val/concept_rate": torch.tensor(rate), "val/preservation": torch.tensor(kept)}
        recipe.epoch_end(module)
        if module.trainer.should_stop:
            break
    assert index == 2  # stage rece-1 lost 10 points of preservation
    assert module._best[1] == "uce" and module._best[0] == pytest.approx(0.3)


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
    assert m.hparams.recipe == "paper" and m.robust is None and m.stopping is None
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
