"""Every setting is checked at start-up, before the pipeline loads: one line naming the setting, exit status 2."""

from __future__ import annotations

import math

import pytest

from rece_lightning.errors import RECEError
from rece_lightning.lightning.cli import main
from rece_lightning.recipes.config import GenerationConfig, RECEConfig, UCEConfig, as_config
from rece_lightning.recipes.paper import Recipe

BAD_SETTINGS = [
    (["--model.concepts", "['']"], "model.concepts holds an empty concept"),
    (["--model.concepts", "[' ']"], "model.concepts holds an empty concept"),
    (["--model.concepts", "[]"], "model.concepts is empty"),
    (["--model.uce.lamb", "0"], "uce.lamb (λ) must be > 0"),
    (["--model.uce.erase_scale", "-1"], "uce.erase_scale must be ≥ 0"),
    (["--model.uce.preserve_scale", ".nan"], "uce.preserve_scale must be a finite number"),
    (["--model.uce.weights", "/no/such/file.safetensors"], "/no/such/file.safetensors does not exist"),
    (["--model.rece.gamma", "-0.1"], "rece.gamma (γ) must be ≥ 0"),
    (["--model.rece.gamma", ".nan"], "rece.gamma (γ) must be a finite number"),
    (["--model.rece.erase_scale", "-2"], "rece.erase_scale must be ≥ 0"),
    (["--model.rece.preserve_scale", ".nan"], "rece.preserve_scale must be a finite number"),
    (["--model.rece.preserve_scale", ".inf"], "rece.preserve_scale must be a finite number"),
    (["--model.rece.lamb", "-1"], "rece.lamb (λ) must be > 0"),
    (["--model.rece.iterations", "-1"], "rece.iterations must be ≥ 0"),
    (["--model.rece.derivation_target", "[a, b]"], "rece.derivation_target needs one text per concept"),
    (["--model.generation.num_inference_steps", "0"], "generation.num_inference_steps must be ≥ 1"),
    (["--model.generation.guidance_scale", ".nan"], "generation.guidance_scale must be a finite number"),
    (["--model.generation.height", "30"], "generation.height must be a multiple of 8"),
    (["--model.generation.image_dir", "/proc/version/images"], "/proc/version is a file, not a folder"),
    (["--model.anchor", "[a, b]"], "1 concepts but 2 anchors"),
    (["--model.torch_dtype", "float8"], "torch_dtype must be one of"),
]


@pytest.mark.parametrize(("args", "message"), BAD_SETTINGS, ids=[" ".join(a) for a, _ in BAD_SETTINGS])
def test_bad_setting_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    """The real entry point (`rece fit`), on a model folder that does not exist: the setting is reported first, so
    nothing was loaded and no work was done."""
    base = ["fit", "--model.pretrained", str(tmp_path / "not-loaded"), "--model.concepts", "[nudity]",
            "--trainer.default_root_dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exit_info:
        main([*base, *args])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert message in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # no partial output


def test_configs_validate_when_made():
    with pytest.raises(RECEError, match="rece.gamma"):
        RECEConfig(gamma=math.inf)
    with pytest.raises(RECEError, match="must be an integer"):
        GenerationConfig(num_inference_steps=2.5)  # type: ignore[arg-type]
    with pytest.raises(RECEError, match="unknown UCEConfig settings"):
        as_config({"lamda": 1.0}, UCEConfig)
    assert as_config({"lamb": 2.0}, UCEConfig).lamb == 2.0
    assert UCEConfig(preserve=["", "a"]).scale_of_preserve(2) == 0.5  # official max(0.1, 1/n)
    assert Recipe.check_settings(["a", "b"], " ", UCEConfig(), RECEConfig(), "replace") == (["a", "b"], [" ", " "])
