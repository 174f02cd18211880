"""What the evaluation cache saves in a sweep: the testbed main job twice, the second with another RECE γ.

Both runs use a fresh, private cache folder (``RECE_CACHE_DIR``). The second run reuses the ``original`` and
``uce`` stages' evaluations (their edited weights are the same; γ changes only the RECE stages) and generates and
judges only the three RECE stages. Prints both wall times (whole ``rece`` processes) and their ratio.

    python bench/cache_sweep.py [--gamma 0.1 0.3] [--config configs/testbed.yaml]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(config: str, gamma: float, root: Path, cache: Path) -> tuple[float, list[str]]:
    """Wall time of ``rece fit --config <config> --model.rece.gamma <gamma>`` and its cache-hit lines."""
    command = [sys.executable, "-m", "rece_lightning.lightning.cli", "fit", "--config", config, "--model.rece.gamma", str(gamma),
               "--trainer.default_root_dir", str(root)]
    env = {**os.environ, "RECE_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}
    env.pop("RECE_CACHE", None)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"rece fit failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return seconds, [line for line in result.stdout.splitlines() if line.startswith("rece: cache hit")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "testbed.yaml"))
    parser.add_argument("--gamma", type=float, nargs=2, default=(0.1, 0.3), help="γ of the first and second run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rece-cache-sweep-") as tmp:
        cache = Path(tmp) / "cache"
        times = []
        for i, gamma in enumerate(args.gamma):
            seconds, hits = run(args.config, gamma, Path(tmp) / f"run{i}", cache)
            times.append(seconds)
            print(f"run {i + 1} (rece.gamma {gamma}): {seconds:.1f} s wall, {len(hits)} stages reused from the cache")
            for line in hits:
                print(f"    {line}")
    print(f"ratio second / first: {times[1] / times[0]:.2f} (target ≤ 0.6)")


if __name__ == "__main__":
    main()
