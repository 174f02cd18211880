"""Shared fixtures: the real CLIP tokenizer from ../shared and tiny random pipelines saved to disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TOKENIZER = SHARED / "fixtures" / "clip-tokenizer"
PROMPTS = SHARED / "prompts"


@pytest.fixture(scope="session")
def tokenizer_path() -> Path:
    if not (TOKENIZER / "vocab.json").is_file():
        pytest.skip(f"the CLIP tokenizer fixture is not at {TOKENIZER}")
    return TOKENIZER


@pytest.fixture(scope="session")
def prompts_dir() -> Path:
    if not PROMPTS.is_dir():
        pytest.skip(f"the paper prompt sets are not at {PROMPTS}")
    return PROMPTS


def _save(tokenizer_path: Path, root: Path, shape: str) -> Path:
    from rece_lightning.random_pipeline import build_random_pipeline

    path = root / shape
    build_random_pipeline(tokenizer_path, shape).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_sd1(tokenizer_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD1-shaped random pipeline saved as a diffusers folder."""
    return _save(tokenizer_path, tmp_path_factory.mktemp("models"), "tiny")


@pytest.fixture(scope="session")
def tiny_sd2(tokenizer_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD2-shaped random pipeline (tokenizer pads with "!")."""
    return _save(tokenizer_path, tmp_path_factory.mktemp("models"), "tiny-sd2")


def tree_digest(root: Path) -> str:
    """Hash of every file's path and bytes below ``root`` (to prove a folder was not modified)."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()
