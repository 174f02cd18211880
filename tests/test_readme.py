"""The README's Python example runs as written (on a tiny random pipeline instead of a downloaded model)."""

from __future__ import annotations

import re
import subprocess
import sys

import torch
from safetensors.torch import load_file

from tests.conftest import REPO


def readme_block(heading: str) -> str:
    """The first ```python block after ``heading`` in README.md."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_from_python_example_runs_without_lightning(tiny_sd1, tmp_path):
    code = readme_block("### From Python")
    assert code.count("\n") <= 8 and "erase(pipe, concepts=" in code
    code = code.replace('"/models/stable-diffusion-v1-4"', repr(str(tiny_sd1))).replace('"out/"', repr(str(tmp_path)))
    code = code.replace("num_inference_steps=30", "num_inference_steps=2")
    check = ("\nimport sys\nassert 'lightning' not in sys.modules, 'the framework-free use imported Lightning'\n"
             "import torch\nprint(sum(float((p.module.weight - recipe.editor.original[p.key]).abs().max())"
             " for p in recipe.editor.projections))\n")
    out = subprocess.run([sys.executable, "-c", code + check], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.strip().splitlines()[-1]) == 0.0  # restore_original undid the edit
    kv = load_file(tmp_path / "kv_weights.safetensors")
    assert kv and all(torch.isfinite(v).all() for v in kv.values())
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file() and (tmp_path / "edit_map.safetensors").is_file()
