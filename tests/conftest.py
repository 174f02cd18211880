"""Shared fixtures: the real CLIP tokenizer (package data of rece_lightning.models.random_pipeline), a small prompt CSV, the
paper prompt sets from ../shared (optional) and tiny random pipelines saved to disk.

Everything but the paper prompt sets ships with the repository, so the suite runs from a plain clone. Tests that
read ``../shared/prompts`` are marked ``prompt_sets`` and skip with a reason that starts with
:data:`PROMPT_SETS_SKIP` when the folder is absent; ``.ci/run`` fails on any other skip. Set ``RECE_SHARED_DIR`` to
use another folder than ``../shared`` (a missing path hides it, as in a plain clone).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the processes the tests start (the installed `rece`, DDP workers) import test doubles from tests/ and this checkout's
# package first, whatever the install points to
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
FIXTURES = REPO / "tests" / "fixtures"
TOKENIZER = REPO / "rece_lightning" / "models" / "random_pipeline" / "clip-tokenizer"  # package data (common.CLIP_TOKENIZER)
SMALL_PROMPTS = FIXTURES / "prompts" / "nudity.csv"
SHARED = Path(os.environ.get("RECE_SHARED_DIR") or REPO.parent / "shared")
PROMPTS = SHARED / "prompts"
SEQ = 32
"""Flux's and SD3's ``max_sequence_length`` in the tests (512 / 256 by default)."""
PROMPT_SETS_SKIP = "prompt sets:"
"""Start of the skip reason of every test that needs the paper prompt sets (``.ci/run`` allows only these skips)."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "prompt_sets: needs the paper prompt sets of ../shared/prompts")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses the ``prompts_dir`` fixture (directly or through other fixtures)."""
    for item in items:
        if "prompts_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.prompt_sets)


@pytest.fixture(scope="session")
def tokenizer_path() -> Path:
    """The CLIP tokenizer shipped with the tests (never skipped: a missing copy is an error)."""
    assert (TOKENIZER / "vocab.json").is_file(), f"the CLIP tokenizer fixture is missing from {TOKENIZER}"
    return TOKENIZER


@pytest.fixture(scope="session")
def prompts_dir() -> Path:
    """The paper prompt sets (``../shared/prompts``); the only fixture allowed to skip."""
    if not PROMPTS.is_dir():
        pytest.skip(f"{PROMPT_SETS_SKIP} the paper prompt sets are not at {PROMPTS}")
    return PROMPTS


@pytest.fixture(scope="session")
def small_prompts() -> Path:
    """Four validation prompts named ``nudity.csv`` (scored by the callbacks of configs/nudity.yaml)."""
    return SMALL_PROMPTS


def _save(tokenizer_path: Path, root: Path, shape: str) -> Path:
    from rece_lightning.models.random_pipeline import build_random_pipeline

    path = root / shape
    build_random_pipeline(tokenizer_path, shape).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_sd1(tokenizer_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD1-shaped random pipeline saved as a diffusers folder."""
    return _save(tokenizer_path, tmp_path_factory.mktemp("models"), "tiny")


def _save_family(tokenizer_path: Path, root: Path, family: str) -> Path:
    from rece_lightning.models.random_pipeline import build_family

    path = root / family
    build_family(family, "tiny", tokenizer_path).save_pretrained(path, safe_serialization=True)
    return path


def _family_fixture(family: str, doc: str):
    """A session fixture: the tiny random pipeline of ``family`` (:func:`build_family`) saved as a diffusers folder."""

    @pytest.fixture(scope="session")
    def fixture(tokenizer_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return _save_family(tokenizer_path, tmp_path_factory.mktemp("models"), family)

    fixture.__doc__ = doc
    return fixture


tiny_sdxl = _family_fixture("sdxl", "A tiny SDXL random pipeline (two CLIP encoders, ``attn2`` width 64).")
tiny_flux = _family_fixture("flux", "A tiny Flux random pipeline (CLIP + tiny T5, ``context_embedder`` 32 → 32).")
tiny_sd3 = _family_fixture(
    "sd3",
    "A tiny SD3 random pipeline (two CLIP encoders of width 32 + tiny T5 of width 96, "
    "``context_embedder`` 96 → 32).")
tiny_hidream = _family_fixture(
    "hidream",
    "A tiny HiDream random pipeline (T5 width 32, Llama width 64, ``llama_layers`` ``(0, 1, 1)``).")
tiny_pixart_sigma = _family_fixture(
    "pixart-sigma",
    "A tiny PixArt-Σ random pipeline (tiny T5 of width 64, ``caption_projection`` 64 → 24).")
tiny_sana = _family_fixture(
    "sana",
    "A tiny SANA random pipeline (Gemma-2 of width 64 with a stand-in tokenizer, ``caption_projection`` "
    "64 → 16).")


@pytest.fixture(scope="session")
def tiny_sd2(tokenizer_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD2-shaped random pipeline (tokenizer pads with "!")."""
    return _save(tokenizer_path, tmp_path_factory.mktemp("models"), "tiny-sd2")


@pytest.fixture(scope="session")
def tiny_clip(tokenizer_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random ``CLIPModel`` with its ``CLIPProcessor`` (the real CLIP tokenizer), saved with save_pretrained
    (safetensors weights)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_path)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 77, "projection_dim": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 30, "patch_size": 6, "projection_dim": 16},
        projection_dim=16,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-clip"
    CLIPModel(config).save_pretrained(path)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 30},
                                                                 crop_size={"height": 30, "width": 30}),
                              tokenizer=tokenizer)
    processor.save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------- a Hugging Face cache
def _blob_name(data: bytes, lfs: bool) -> str:
    """The blob's name in huggingface_hub's cache: the SHA-256 of an LFS file, the git blob SHA-1 of the others."""
    if lfs:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubCache:
    """A Hugging Face cache in a temporary ``HF_HOME``, laid out as huggingface_hub lays out downloaded repositories:
    ``hub/models--org--name/{blobs,snapshots/<commit>,refs/<ref>}``, the snapshot's files being relative symlinks to
    the blobs. :attr:`env` is the environment of a process that uses it offline (``HF_HUB_OFFLINE=1``)."""

    home: Path
    commits: dict[str, str] = field(default_factory=dict)

    @property
    def hub(self) -> Path:
        return self.home / "hub"

    @property
    def env(self) -> dict[str, str]:
        drop = {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_DATASETS_CACHE"}
        return {**{k: v for k, v in os.environ.items() if k not in drop},
                "HF_HOME": str(self.home), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}

    def add(self, repo_id: str, folder: Path, ref: str = "main", downloaded: Callable[[str], bool] | None = None) -> Path:
        """Put the files of ``folder`` in the cache as repository ``repo_id`` at branch ``ref``; its snapshot folder.

        As huggingface_hub ≥ 2 does after a download, the repository's file listing is kept in ``trees/<commit>.json``
        (it lets huggingface_hub tell a partial snapshot offline). ``downloaded`` (a predicate on the file's path in
        the repository) leaves the other files listed but not downloaded, like ``hf download --exclude``.
        """
        lfs = (".safetensors", ".bin", ".pth", ".onnx", ".msgpack", ".h5")
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        listing = hashlib.sha1()
        for file in files:
            listing.update(str(file.relative_to(folder)).encode() + file.read_bytes())
        commit = listing.hexdigest()
        repo = self.hub / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / commit
        tree: dict[str, dict[str, object]] = {}
        for file in files:
            data = file.read_bytes()
            name = file.relative_to(folder).as_posix()
            tree[name] = {"size": len(data), "blob_id": _blob_name(data, lfs=False)}
            if file.suffix in lfs:
                tree[name].update(lfs_sha256=_blob_name(data, lfs=True), lfs_size=len(data))
            if downloaded is not None and not downloaded(name):
                continue
            blob = repo / "blobs" / _blob_name(data, file.suffix in lfs)
            blob.parent.mkdir(parents=True, exist_ok=True)
            if not blob.exists():
                shutil.copyfile(file, blob)
            link = snapshot / file.relative_to(folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():  # the same files under another ref share the snapshot
                link.symlink_to(os.path.relpath(blob, link.parent))
        (repo / "trees").mkdir(parents=True, exist_ok=True)
        (repo / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": tree}))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
        self.commits[repo_id] = commit
        return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path) -> HubCache:
    """An empty Hugging Face cache (``HF_HOME``) to fill with :meth:`HubCache.add`; its ``env`` is offline."""
    return HubCache(tmp_path / "hf-home")


def tree_digest(root: Path) -> str:
    """Hash of every file's path and bytes below ``root`` (to prove a folder was not modified)."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(autouse=True)
def _private_eval_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own empty evaluation cache (never the user's ``~/.cache/rece-lightning``); subprocesses
    inherit it through the environment."""
    monkeypatch.setenv("RECE_CACHE_DIR", str(tmp_path_factory.mktemp("rece-cache")))
    monkeypatch.delenv("RECE_CACHE", raising=False)
