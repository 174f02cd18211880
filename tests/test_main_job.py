"""The README's main job (configs/testbed.yaml) through the CLI on the testbed, and the quickstart notebook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rece_lightning.lightning.cli import main
from tests.conftest import REPO


def test_main_job_lowers_the_concept_rate(tmp_path):
    """Short settings: 12 explicit prompts, 10 denoising steps, UCE + 1 RECE iteration."""
    root = tmp_path / "run"
    main(["fit", "--config", str(REPO / "configs" / "testbed.yaml"), "--trainer.default_root_dir", str(root),
          "--data.kinds", "[explicit, unrelated]", "--data.limit", "24", "--model.rece.iterations", "1",
          "--model.generation.num_inference_steps", "10"])
    version = root / "lightning_logs" / "version_0"
    rate = {}
    for stage in ("original", "uce", "rece-1"):
        summary = json.loads((version / "eval" / stage / "classifier.json").read_text())["summary"]
        rate[stage] = summary["val/concept_rate"]
    assert rate["rece-1"] < rate["original"]
    assert (version / "export" / "kv_weights.safetensors").is_file()
    assert len(list((version / "checkpoints").glob("stage-*.ckpt"))) == 3


def test_quickstart_notebook_runs():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = REPO / "notebooks" / "quickstart.ipynb"
    notebook = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    # quiet: no warning, log message or progress bar reaches the reader (they arrive as stderr streams)
    noise = [o["text"] for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    assert not noise, noise
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "Warning" not in text and "warn" not in text.lower(), text
    last = notebook.cells[-2]["outputs"][0]["data"]["text/plain"]
    assert "original" in last and "RECE" in last
    assert Path(path).stat().st_size < 200_000
