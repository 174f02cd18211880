"""Every preset in configs/ parses with the real command line (types and keys checked by jsonargparse, callback
classes imported), without loading a model."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from rece_lightning.cli import main

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
        if robust.get("judged_prompts"):
            assert (REPO / robust["judged_prompts"]).is_file(), f"{preset.name}: {robust['judged_prompts']} is missing"
