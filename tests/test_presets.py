"""Every preset in configs/ parses with the real command line (types and keys checked by jsonargparse, callback
classes imported), without loading a model, and erases exactly the stages it names."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from rece_lightning.lightning.cli import main
from rece_lightning.recipes.config import RECEConfig
from rece_lightning.recipes.robust.config import RobustConfig
from rece_lightning.recipes.selection import KEPT_STAGE

REPO = Path(__file__).resolve().parent.parent
PRESETS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_preset_parses(preset, monkeypatch):
    monkeypatch.chdir(REPO)  # presets name files relative to the repository root
    subcommand = "test" if preset.name.startswith("attack") else "fit"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", str(preset), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(out.getvalue())
    assert printed["model"]["pretrained"]


def test_robust_presets_name_existing_judged_prompts():
    for preset in PRESETS:
        robust = (yaml.safe_load(preset.read_text()).get("model") or {}).get("robust") or {}
        if robust.get("judged_prompts") not in (None, "auto"):
            assert (REPO / robust["judged_prompts"]).is_file(), f"{preset.name}: {robust['judged_prompts']} is missing"


# the tiny random pipeline standing in for each preset's real model (by the family its path names)
FAMILY_FIXTURES = (("stable-diffusion-v1", "tiny_sd1"), ("flux", "tiny_flux"), ("sd3", "tiny_sd3"), ("stable-diffusion-3", "tiny_sd3"),
                   ("pixart", "tiny_pixart_sigma"), ("sana", "tiny_sana"), ("hidream", "tiny_hidream"),
                   ("xl", "tiny_sdxl"))
# robust presets: smaller caption sets (the stage list does not depend on them), so that each preset takes seconds
ROBUST_SMALL = ["--model.robust.num_prompts", "4", "--model.robust.concept_texts", "[]", "--model.robust.templates",
                '["{}"]', "--model.robust.gammas", "[0.1]", "--model.robust.judged_prompts", "null",
                "--model.robust.expand", "0", "--model.robust.mine_neighbours", "0"]


def expected_stages(model: dict) -> list[str]:
    """The stages a preset's model section asks for, read from the YAML alone (the oracle of the test below)."""
    robust = model.get("recipe") == "robust"
    section = model.get("robust" if robust else "rece") or {}
    iterations = section.get("iterations", RobustConfig().iterations if robust else RECEConfig().iterations)
    original = ["original"] if model.get("validate_original", True) else []
    return [*original, "uce", *(f"rece-{i}" for i in range(1, iterations + 1))]


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_preset_runs_every_stage_it_names(preset, tmp_path, monkeypatch, request):
    """Erase only (validation off) with each preset on the testbed or a tiny pipeline of its family: one checkpoint
    per stage of the preset's recipe (``robust.iterations`` under ``recipe: robust``: rece-4 of nudity_robust.yaml
    once never ran), and ``kept_stage.json`` names the same stages and keeps the last one (nothing was validated)."""
    monkeypatch.chdir(REPO)
    model = yaml.safe_load(preset.read_text())["model"]
    pretrained = model["pretrained"]
    if pretrained != "testbed":
        fixture = next(f for word, f in FAMILY_FIXTURES if word in pretrained.lower())
        pretrained = str(request.getfixturevalue(fixture))
    root = tmp_path / "runs"
    main(["fit", "--config", str(preset), "--model.pretrained", pretrained, "--data.val_prompts", "null",
          "--trainer.default_root_dir", str(root), "--trainer.callbacks", CHECKPOINT_EVERY_STAGE,
          *(ROBUST_SMALL if model.get("recipe") == "robust" else [])])
    run = root / "lightning_logs" / "version_0"
    checkpoints = sorted(run.glob("checkpoints/stage-epoch=*.ckpt"), key=lambda p: int(p.stem.split("=")[1]))
    ran = [torch.load(p, map_location="cpu", weights_only=True)["rece"]["stage"] for p in checkpoints]
    expected = expected_stages(model)
    assert ran == expected
    kept = json.loads((run / KEPT_STAGE).read_text())
    assert kept["stages"] == expected and kept["stage"] == expected[-1]


CHECKPOINT_EVERY_STAGE = ('[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, '
                          'init_args: {save_top_k: -1, filename: "stage-{epoch}"}}]')


def test_nudity_robust_preset_by_hub_id_finds_its_auto_settings_through_the_installed_rece(tiny_sd1, hub_cache,
                                                                                             tmp_path):
    """configs/nudity_robust.yaml as a user runs it: the installed ``rece``, SD 1.4 by its Hub id (a tiny random
    SD1 pipeline laid out as that repository in an offline HF cache), ``concept_texts: auto`` and ``judged_prompts:
    auto`` found inside the run with the run's judge, and every stage run (4 robust iterations). NudeNet cannot judge
    random images: the judge here is :class:`tests.judges.PromptWordJudgeTestDouble`, which reads the prompt."""
    preset = REPO / "configs" / "nudity_robust.yaml"
    model = yaml.safe_load(preset.read_text())["model"]
    auto = model["robust"]["auto"]
    assert model["pretrained"] == "CompVis/stable-diffusion-v1-4"
    assert model["robust"]["concept_texts"] == model["robust"]["judged_prompts"] == "auto"
    hub_cache.add(model["pretrained"], tiny_sd1)
    captions = [line for line in (REPO / auto["captions"]).read_text().splitlines()[1:] if line]
    judge = ('[{class_path: tests.judges.PromptWordJudgeTestDouble, init_args: {words: [nudity, sauna, bathing]}}, '
             '{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {save_top_k: -1, '
             'filename: "stage-{epoch}"}}]')
    small = [a for pair in zip(ROBUST_SMALL[::2], ROBUST_SMALL[1::2], strict=True)
             if pair[0] not in ("--model.robust.concept_texts", "--model.robust.judged_prompts") for a in pair]
    root = tmp_path / "runs"
    done = subprocess.run(["rece", "fit", "--config", str(preset), "--data.val_prompts", "null",
                           "--trainer.default_root_dir", str(root), "--trainer.callbacks", judge, *small,
                           "--model.robust.auto.pool", "12", "--model.robust.auto.shortlist", "4",
                           "--model.robust.auto.seeds", "1", "--model.robust.auto.keep", "1",
                           "--model.robust.auto.samples", str(len(captions)), "--model.generation.num_inference_steps",
                           "2", "--model.robust.auto.cache", "false"],
                          capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**hub_cache.env, "RECE_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    expected = expected_stages(model)
    assert expected[-1] == "rece-4"
    assert [line.split()[3] for line in done.stdout.splitlines() if " done in " in line] == expected
    run = root / "lightning_logs" / "version_0"
    assert json.loads((run / KEPT_STAGE).read_text())["stage"] == "rece-4"
    found = json.loads((run / "robust" / "auto.json").read_text())
    assert found["source"] == "search"
    assert found["concept_texts"][:len(auto["synonyms"])] == auto["synonyms"]  # the synonyms, then the words found
    judged = {row["prompt"]: row["shows_concept"] for row in found["judged"]}
    assert set(judged) == set(captions)
    assert {p for p, shown in judged.items() if shown} == {p for p in captions if {"sauna", "bathing"} & set(p.split())}
