"""Optional extras resolve against the installed environment without replacing torch.

``pip install 'rece-lightning[fid]'`` pulls torch-fidelity, which needs torchvision; a torchvision resolved from PyPI
requires the newest torch and pip then replaces the user's build (e.g. a CPU torch by a CUDA one). The documented
order (docs/metrics.md, the comment of the ``fid`` extra in pyproject.toml) installs torchvision first, pinned to the
installed torch, from torch's own index. This test asks pip itself (``pip install --dry-run --report``, the configured
package index) what installing the extra would do, after that first step when torchvision is not installed here.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys

from tests.conftest import REPO


def _extra(name: str) -> list[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    with (REPO / "pyproject.toml").open("rb") as handle:
        return list(tomllib.load(handle)["project"]["optional-dependencies"][name])


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", requirement).lower()


def test_fid_extra_keeps_the_installed_torch(tmp_path):
    torch_version = importlib.metadata.version("torch")
    first_step = [] if importlib.util.find_spec("torchvision") else [f"torch=={torch_version}", "torchvision"]
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-input", "--report", str(report),
         *first_step, *_extra("fid")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"pip cannot install the fid extra next to torch {torch_version}: {result.stderr}"
    installs = {_name(item["metadata"]["name"]): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    assert "torch" not in installs, f"the fid extra would replace torch {torch_version} by {installs['torch']}"
    assert not any(name.startswith("nvidia-") for name in installs), sorted(installs)
    if importlib.util.find_spec("torch_fidelity") is None:
        assert "torch-fidelity" in installs, sorted(installs)
