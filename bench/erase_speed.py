"""Time the nudity recipe (UCE init + 3 RECE iterations) on a random pipeline with Stable Diffusion 1.4's shapes.

Model loading is excluded from the time; the recipe includes the text encodings, the gram matrix, the closed-form
solves and folding the edit into the 32 K/V projections. A second process runs an erase-only job (load, erase,
export) and reports its peak resident memory.

    python bench/erase_speed.py [--repeats 5] [--dtype float32] [--device cuda]

The random SD-1.4-shaped pipeline (~2 GB in float16) is cached under bench/.cache/ (ignored by git).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
TOKENIZER = Path(os.environ.get("RECE_CLIP_TOKENIZER", HERE.parent.parent / "shared" / "fixtures" / "clip-tokenizer"))
CACHE = HERE / ".cache" / "sd14-random"
RECIPE = dict(
    concepts=["nudity"],
    anchor=" ",
    uce={"lamb": 0.5, "erase_scale": 1.0, "preserve_scale": 1.0, "preserve": [""]},
    rece={"iterations": 3, "gamma": 0.1, "lamb": 0.1, "erase_scale": 1.0, "preserve_scale": 0.1, "preserve": [" "]},
    validate_original=False,
)


def ensure_model() -> Path:
    if (CACHE / "model_index.json").is_file():
        return CACHE
    from rece_lightning.random_pipeline import build_random_pipeline

    print(f"building a random SD-1.4-shaped pipeline in {CACHE} (once) ...", flush=True)
    pipe = build_random_pipeline(TOKENIZER, "sd14", dtype=torch.float16)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=CACHE.parent))
    pipe.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(CACHE)
    return CACHE


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_recipe(model: Path, dtype: str, repeats: int, device: torch.device) -> None:
    from rece_lightning.module import RECEModule

    times, ranks = [], []
    for _ in range(repeats):
        module = RECEModule(pretrained=str(model), torch_dtype=dtype, **RECIPE)  # loading: not timed
        module.to(device)
        module.editor.to(device)
        synchronize(device)
        start = time.perf_counter()
        editor = module.erase()
        synchronize(device)
        times.append(time.perf_counter() - start)
        ranks.append(editor.edit_rank())
        del module, editor
    n_proj = 32
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"recipe (UCE + 3 RECE iterations, {n_proj} K/V projections of width 768, {dtype}, {where}): median {statistics.median(times):.3f} s, "
          f"min {min(times):.3f} s over {repeats} runs; rank(T - I) = {ranks[0]}")


def peak_rss_gb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss it is not inherited from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def erase_only(model: str, out: str, dtype: str) -> None:
    """Child process: load, erase, export; print peak RSS."""
    from rece_lightning.export import export_edit
    from rece_lightning.module import RECEModule

    module = RECEModule(pretrained=model, torch_dtype=dtype, **RECIPE)
    export_edit(module.erase(), out, ["kv_weights", "edit_map", "lora"])
    peak = peak_rss_gb()
    print(f"erase-only run (load {dtype} pipeline, erase, export kv_weights/edit_map/lora): peak RSS {peak:.2f} GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", help="dtype of the timed runs")
    parser.add_argument("--memory-dtype", default="float16", help="dtype of the erase-only memory run")
    parser.add_argument("--device", default="cpu", help="where the recipe runs (cpu, cuda)")
    parser.add_argument("--erase-only", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.erase_only:
        erase_only(*args.erase_only, args.memory_dtype)
        return
    model = ensure_model()
    time_recipe(model, args.dtype, args.repeats, torch.device(args.device))
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, __file__, "--memory-dtype", args.memory_dtype, "--erase-only", str(model), out],
                       check=True)


if __name__ == "__main__":
    main()
