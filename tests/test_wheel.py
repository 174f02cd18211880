"""The wheel holds the product: built from the tracked files, installed on its own (no checkout, no tests/, no
../shared), its random-pipeline builder and ``rece report`` work."""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO


def _source_files(repo: Path) -> list[str]:
    """The project's files: git's tracked and unignored ones in a checkout; in a plain copy without ``.git`` (CI tests
    one), every file whose path matches no ``.gitignore`` pattern."""
    if (repo / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                                capture_output=True, check=True).stdout.decode()
        return [name for name in listed.split("\0") if name and (repo / name).is_file()]
    patterns = [line.strip() for line in (repo / ".gitignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(relative: str) -> bool:
        name = relative.rpartition("/")[2]
        return any(fnmatch.fnmatch(relative, p.strip("/")) if p.startswith("/") else fnmatch.fnmatch(name, p.strip("/"))
                   for p in patterns)

    found = []
    for folder, subfolders, names in os.walk(repo):
        here = "" if Path(folder) == repo else Path(folder).relative_to(repo).as_posix()
        subfolders[:] = [d for d in subfolders if d != ".git" and not ignored(f"{here}/{d}".lstrip("/"))]
        found += [f"{here}/{n}".lstrip("/") for n in names if not ignored(f"{here}/{n}".lstrip("/"))]
    return sorted(found)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package built into a wheel from a copy of the tracked files and installed into a bare target folder."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    for name in _source_files(REPO):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes((REPO / name).read_bytes())
    run = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*run, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(source)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = (root / "dist").glob("rece_lightning-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "rece_lightning/models/random_pipeline/clip-tokenizer/vocab.json" in names and "rece_lightning/lightning/judged_prompts.py" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]
    target = root / "site"
    subprocess.run([*run, "install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, timeout=600)
    return target


def _python(target: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run Python with the installed wheel first on the path (the dependencies come from this environment)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RECE_CLIP_TOKENIZER")}
    env["PYTHONPATH"] = str(target)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_random_pipeline_runs_from_the_wheel(installed, tmp_path):
    where = _python(installed, "-c", "import rece_lightning.models.random_pipeline as r; print(r.default_clip_tokenizer())",
                    cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed)  # the tokenizer shipped in the wheel
    done = _python(installed, "-m", "rece_lightning.models.random_pipeline", "--family", "sd14", str(tmp_path / "sd"),
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    index = json.loads((tmp_path / "sd" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert (tmp_path / "sd" / "tokenizer" / "tokenizer.json").is_file()


def test_report_runs_from_the_wheel(installed, tmp_path):
    run = tmp_path / "version_0"
    (run / "eval" / "uce").mkdir(parents=True)
    (run / "eval" / "uce" / "classifier.json").write_text(json.dumps({"summary": {"val/concept_rate": 0.25}}))
    done = _python(installed, "-c", "from rece_lightning.lightning.cli import main; main()", "report", str(run), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "| uce | 25 % |" in done.stdout
