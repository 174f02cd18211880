"""Model arguments by Hugging Face Hub id: resolved through huggingface_hub (and diffusers' own download for
pipelines) in a cache laid out exactly as huggingface_hub lays it out, offline; the real ``rece`` entry point erases a
pipeline given by id and scores CLIP with a model cached as ``openai/clip-vit-large-patch14``; a missing id is one line
before anything loads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rece_lightning.errors import RECEError
from rece_lightning.models.source import TESTBED, download_command, hub_id, is_testbed, resolve
from tests.conftest import REPO, SMALL_PROMPTS, HubCache, tree_digest

NUDITY = str(REPO / "configs" / "nudity.yaml")
CLIP = str(REPO / "callbacks" / "clip_score.yaml")
PAPER_CLIP = "openai/clip-vit-large-patch14"


def rece(args: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The installed ``rece`` console script in a fresh process."""
    script = shutil.which("rece", path=str(Path(sys.executable).parent)) or shutil.which("rece")
    assert script is not None, "the rece console script is not installed (pip install -e .)"
    return subprocess.run([script, *args], cwd=cwd, env={**env, "PYTHONUNBUFFERED": "1"}, capture_output=True,
                          text=True, timeout=900)


def one_error_line(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("rece:")]
    assert len(lines) == 1 and lines[0].startswith("rece: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------------ the resolver
def test_what_is_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "sd").mkdir(parents=True)
    assert hub_id("CompVis/stable-diffusion-v1-4") == ("CompVis/stable-diffusion-v1-4", None)
    assert hub_id("org/name@v1.0") == ("org/name", "v1.0")
    assert hub_id("models/sd") is None  # an existing local folder wins, as in diffusers and transformers
    assert hub_id("models/absent") == ("models/absent", None)
    for local in (TESTBED, "name", "/abs/org/name", "./org/name", "a/b/c", "org/name@", "org/na--me"):
        assert hub_id(local) is None, local
    assert is_testbed(TESTBED) and not is_testbed("org/name") and not is_testbed(None)
    assert download_command("org/name", "v1") == "hf download org/name --revision v1"
    source = resolve(str(tmp_path / "models" / "sd"))
    assert source.folder == tmp_path / "models" / "sd" and source.repo_id is None and source.commit is None
    assert resolve(TESTBED).testbed


def test_resolve_reads_the_cache_through_huggingface_hub(tiny_sd1, tiny_clip, hub_cache, monkeypatch):
    """Offline, branch names are read from refs/, commit hashes name snapshots; a missing id or revision is one line
    naming the command that fetches it."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache.hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    snapshot = hub_cache.add("org/tiny-sd", tiny_sd1)
    hub_cache.add("org/tiny-sd", tiny_sd1, ref="v1")
    commit = hub_cache.commits["org/tiny-sd"]
    for spec, revision in (("org/tiny-sd", None), ("org/tiny-sd@v1", "v1"), (f"org/tiny-sd@{commit}", commit)):
        source = resolve(spec, "model.pretrained")
        assert (source.folder, source.repo_id, source.revision, source.commit) == (
            snapshot, "org/tiny-sd", revision, commit)
        assert source.identity()["commit"] == commit
    hub_cache.add(PAPER_CLIP, tiny_clip)
    clip = resolve(PAPER_CLIP, "CLIP", kind="transformers")
    assert (clip.folder / "config.json").is_file() and clip.commit == hub_cache.commits[PAPER_CLIP]
    with pytest.raises(RECEError) as err:
        resolve("org/absent", "model.pretrained")
    message = str(err.value)
    assert "\n" not in message and "`hf download org/absent`" in message and "HF_HUB_OFFLINE=1" in message
    with pytest.raises(RECEError, match="`hf download org/tiny-sd --revision v2`"):
        resolve("org/tiny-sd@v2", "model.pretrained")


LEAN_FETCH = ("*.bin", "*.msgpack", "*.fp16.*")
"""What the lean command of docs/models.md leaves out (``hf download … --exclude`` each)."""


def test_lean_fetch_satisfies_diffusers_and_a_partial_snapshot_is_named(tiny_sd1, hub_cache, monkeypatch, tmp_path):
    """A repository with pickled, Flax and fp16 copies beside the safetensors weights, fetched without them (the
    command in docs/models.md): diffusers' own offline look-up accepts it. Without one weight it is refused in one
    line that names the missing file."""
    from huggingface_hub import constants
    from huggingface_hub.utils import filter_repo_objects

    import rece_lightning.models.source as model_source

    docs = (REPO / "docs" / "models.md").read_text()
    assert "hf download CompVis/stable-diffusion-v1-4 " + " ".join(f'--exclude "{p}"' for p in LEAN_FETCH) in docs
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache.hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    repo = tmp_path / "repo"
    shutil.copytree(tiny_sd1, repo)
    for part in ("unet", "vae", "text_encoder"):
        for extra in ("weights.bin", "flax_model.msgpack", "diffusion_pytorch_model.fp16.safetensors"):
            (repo / part / extra).write_bytes(b"not fetched")
    names = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    lean = set(filter_repo_objects(names, ignore_patterns=list(LEAN_FETCH)))
    assert len(lean) == len(names) - 9
    snapshot = hub_cache.add("org/lean", repo, downloaded=lean.__contains__)
    assert resolve("org/lean", "model.pretrained").folder == snapshot
    model_source._download.cache_clear()
    (snapshot / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(RECEError) as err:
        resolve("org/lean", "model.pretrained")
    assert "only partly in the Hugging Face cache" in str(err.value)
    assert "unet/diffusion_pytorch_model.safetensors" in str(err.value) and "`hf download org/lean`" in str(err.value)


# ------------------------------------------------------------------------------- the real command, by Hub id
@pytest.fixture(scope="module")
def hub_run(tiny_sd1, tiny_clip, tmp_path_factory) -> tuple[HubCache, Path, subprocess.CompletedProcess, str]:
    """``rece fit`` offline on ``org/tiny-sd`` with the CLIP score of a tiny CLIP cached as the papers' model id."""
    cache = HubCache(tmp_path_factory.mktemp("hf") / "home")
    cache.add("org/tiny-sd", tiny_sd1)
    cache.add(PAPER_CLIP, tiny_clip)
    before = tree_digest(cache.home)
    root = tmp_path_factory.mktemp("hub-run")
    result = rece(["fit", "--config", NUDITY, "--config", CLIP, "--model.pretrained", "org/tiny-sd",
                   "--model.rece.iterations", "0", "--model.keep_best", "null", "--data.val_prompts", str(SMALL_PROMPTS),
                   "--data.limit", "2", "--data.batch_size", "2", "--model.generation.num_inference_steps", "2",
                   "--trainer.default_root_dir", str(root)], cache.env)
    assert result.returncode == 0, result.stderr[-3000:]
    return cache, root, result, before


def test_rece_fit_erases_a_pipeline_given_by_hub_id(hub_run, tiny_sd1):
    cache, root, _, before = hub_run
    (run,) = sorted((root / "lightning_logs").iterdir())
    assert (run / "config.yaml").read_text().count("pretrained: org/tiny-sd") == 1
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["original", "uce"]
    assert tree_digest(cache.home) == before, "the Hugging Face cache was modified"


def test_clip_score_defaults_to_the_papers_model_from_the_cache(hub_run):
    """callbacks/clip_score.yaml, unedited, scores with the model cached as openai/clip-vit-large-patch14."""
    cache, root, _, _ = hub_run
    (run,) = sorted((root / "lightning_logs").iterdir())
    saved = json.loads((run / "eval" / "uce" / "clip_score.json").read_text())
    protocol = saved["protocol"]
    assert protocol["model_id"] == PAPER_CLIP and protocol["model_commit"] == cache.commits[PAPER_CLIP]
    assert protocol["model_name_or_path"].startswith(str(cache.hub))
    assert len(saved["records"]) == 2 and all(isinstance(r["clip_score"], float) for r in saved["records"])


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--model.pretrained", "org/absent"], ["model.pretrained org/absent", "`hf download org/absent`"]),
        (["--config", CLIP], [f"model_name_or_path {PAPER_CLIP}", f"`hf download {PAPER_CLIP}`"]),
    ],
    ids=["pipeline", "clip-default"],
)
def test_missing_hub_id_offline_is_one_line_before_anything_loads(args, needles, hub_cache, tmp_path):
    root = tmp_path / "runs"
    result = rece(["fit", "--config", NUDITY, *args, "--trainer.default_root_dir", str(root)], hub_cache.env)
    one_error_line(result, "HF_HUB_OFFLINE=1", *needles)
    assert not root.exists(), "a run folder was left behind"


def test_fid_preset_without_weights_offline_is_one_line(hub_cache, tmp_path):
    """callbacks/fid.yaml with an empty torch hub cache and no network: one line (the missing torch-fidelity, or the
    weights file and how to get it), before anything loads and without a run folder."""
    import importlib.util

    from rece_lightning.lightning.callbacks.inception import INCEPTION_WEIGHTS

    root = tmp_path / "runs"
    env = {**hub_cache.env, "TORCH_HOME": str(tmp_path / "torch"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    result = rece(["fit", "--config", NUDITY, "--config", str(REPO / "callbacks" / "fid.yaml"),
                   "--trainer.default_root_dir", str(root)], env)
    installed = importlib.util.find_spec("torch_fidelity") is not None
    one_error_line(result, *([INCEPTION_WEIGHTS, "could not be downloaded"] if installed else
                             ["torch-fidelity", "--index-url", "rece-lightning[fid]"]))
    assert not root.exists()
    assert not any((tmp_path / "torch").rglob("*.pth"))

