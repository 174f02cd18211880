"""Time the nudity recipe (UCE init + 3 RECE iterations) on a random pipeline of one model family.

Model loading is excluded from the time; the recipe includes the text encodings, the gram matrix, the closed-form
solves and folding the edit into the text-reading layers. A second process runs an erase-only job (load the text
side, erase, export) and reports its load time and peak resident memory; ``--fit-process`` also times a whole
``rece fit --config configs/nudity.yaml`` (``nudity_sdxl.yaml`` for SDXL) process without validation (imports,
loading, Trainer, writes) and prints its peak memory, its checkpoints' and exports' sizes and the run folder's size.
Erasing loads only the text encoders and the text-reading layers (read from the safetensors files), never the
UNet / transformer.

    python bench/erase_speed.py [--family sd14|sd2|sdxl|flux|sd3] [--size full|tiny] [--repeats 5] [--dtype float32]
                                [--device cuda] [--fit-process] [--profile]

``--profile`` runs the same ``rece fit`` under cProfile in a child process and prints its time by phase (imports,
loading the text side, erase, checkpoints, exports, the Trainer and the rest).

Random pipelines (``python -m rece_lightning.random_pipeline``, float16; SD-1.4 ~2 GB, SDXL ~7 GB, Flux ~33 GB in
bfloat16, SD3-medium ~15 GB in bfloat16) are cached under bench/.cache/ (ignored by git).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "sd14-random"  # the SD-1.4-shaped model (gpu_check.sh's default MODEL)
RECIPE = dict(
    concepts=["nudity"],
    anchor=" ",
    uce={"lamb": 0.5, "erase_scale": 1.0, "preserve_scale": 1.0, "preserve": [""]},
    rece={"iterations": 3, "gamma": 0.1, "lamb": 0.1, "erase_scale": 1.0, "preserve_scale": 0.1, "preserve": [" "]},
    validate_original=False,
)


def cache_dir(family: str, size: str) -> Path:
    return CACHE if (family, size) == ("sd14", "full") else HERE / ".cache" / f"{family}-{size}-random"


def ensure_model(family: str = "sd14", size: str = "full") -> Path:
    folder = cache_dir(family, size)
    if (folder / "model_index.json").is_file():
        return folder
    from rece_lightning.random_pipeline import build_family

    dtype = torch.float32 if size == "tiny" else torch.bfloat16 if family in ("flux", "sd3") else torch.float16
    print(f"building a random {family} pipeline ({size}) in {folder} (once) ...", flush=True)
    pipe = build_family(family, size, dtype=dtype)  # the CLIP tokenizer shipped with the package
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent))
    pipe.save_pretrained(tmp, safe_serialization=True)
    del pipe
    tmp.rename(folder)
    return folder


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_recipe(model: Path, dtype: str, repeats: int, device: torch.device) -> None:
    from rece_lightning.module import RECEModule

    times, ranks = [], []
    for _ in range(repeats):
        module = RECEModule(pretrained=str(model), torch_dtype=dtype, **RECIPE)  # loading: not timed
        assert module.family.text_only, "erasing must not load the denoiser"
        module.to(device)
        module.editor.to(device)
        synchronize(device)
        start = time.perf_counter()
        editor = module.erase()
        synchronize(device)
        times.append(time.perf_counter() - start)
        ranks.append(editor.edit_rank())
        n_proj, width, family = len(editor.projections), editor.dim, module.family.name
        del module, editor
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    if device.type == "cuda":
        where += f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 1024**3:.2f} GiB"
    print(f"{family}: recipe (UCE + 3 RECE iterations, {n_proj} text-reading layers of width {width}, {dtype}, "
          f"{where}): median {statistics.median(times):.3f} s, min {min(times):.3f} s over {repeats} runs; "
          f"rank(T - I) = {ranks[0]}")


def peak_rss_gb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss it is not inherited from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def erase_only(model: str, out: str, dtype: str) -> None:
    """Child process: load the text side, erase, export; print the times and the peak RSS."""
    start = time.perf_counter()
    from rece_lightning.export import export_edit
    from rece_lightning.module import RECEModule

    imported = time.perf_counter()
    module = RECEModule(pretrained=model, torch_dtype=dtype, **RECIPE)
    loaded = time.perf_counter()
    editor = module.erase()
    erased = time.perf_counter()
    written = export_edit(editor, out, ["kv_weights", "edit_map", "lora"])
    done = time.perf_counter()
    peak = peak_rss_gb()
    from rece_lightning.export import read_metadata

    lora = read_metadata(written["lora"])["lora"]
    print("exports: " + ", ".join(f"{fmt} {path.stat().st_size / 1e6:.1f} MB" for fmt, path in written.items())
          + f"; LoRA rank {lora['rank']} (exact: {lora['exact']})")
    print(f"erase-only run ({module.family.name}, {dtype}; denoiser loaded: {not module.family.text_only}): imports "
          f"{imported - start:.1f} s, load text side {loaded - imported:.1f} s, erase {erased - loaded:.1f} s, export "
          f"{done - erased:.1f} s; peak RSS {peak:.2f} GB")


def folder_size(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def fit_process(model: Path, family: str) -> None:
    """Wall time and peak memory of a whole ``rece fit`` process without validation (the user's command: the
    family's nudity preset, its checkpoints and exports), then the size of every checkpoint and of the run folder."""
    config = "nudity_sdxl.yaml" if family == "sdxl" else "nudity.yaml"
    with tempfile.TemporaryDirectory() as root:
        cmd = [sys.executable, "-m", "rece_lightning.cli", "fit", "--config", str(HERE.parent / "configs" / config),
               "--model.pretrained", str(model), "--model.validate_original", "false",
               "--data.val_prompts", "null", "--trainer.default_root_dir", root,
               "--trainer.enable_progress_bar", "false"]
        start = time.perf_counter()
        result = subprocess.run(cmd, check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # the largest child: this process
        print(f"rece fit --config configs/{config} (no validation) as a whole process: {seconds:.1f} s, "
              f"peak RSS {peak:.2f} GB")
        run = Path(root)
        for file in sorted(run.rglob("*.ckpt")) + sorted(run.rglob("export/*")):
            print(f"    {file.relative_to(run)}: {file.stat().st_size / 1e6:.1f} MB")
        print(f"    run folder: {folder_size(run) / 1e6:.1f} MB")
        for line in result.stdout.splitlines():
            if line.startswith("rece: exported lora"):
                print(f"    {line}")


PHASES = {  # (file suffix, function) → phase of a `rece fit` without validation
    ("rece_lightning/module.py", "__init__"): "load the text side (RECEModule.__init__)",
    ("rece_lightning/recipe.py", "run"): "erase (the recipe's stages)",
    ("lightning/pytorch/trainer/trainer.py", "save_checkpoint"): "checkpoints (Trainer.save_checkpoint)",
    ("rece_lightning/callbacks/export.py", "on_fit_end"): "exports (ExportEdit)",
}


def profile_fit(model: str, config: str) -> None:
    """Child process: import the CLI (timed), run ``rece fit`` without validation under cProfile and print where
    its time goes, by phase (cumulative times of the functions in :data:`PHASES`; the rest is the Trainer's)."""
    import cProfile
    import pstats

    start = time.perf_counter()
    from rece_lightning.cli import main as rece

    imported = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as root:
        profiler = cProfile.Profile()
        begin = time.perf_counter()
        profiler.enable()
        try:
            rece(["fit", "--config", config, "--model.pretrained", model, "--model.validate_original", "false",
                  "--data.val_prompts", "null", "--trainer.default_root_dir", root,
                  "--trainer.enable_progress_bar", "false"])
        except SystemExit as done:
            if done.code:
                raise
        profiler.disable()
        total = time.perf_counter() - begin
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    phases: dict[str, float] = {}
    for (file, _, function), (_, _, _, cumulative, _) in stats.items():
        for (suffix, name), phase in PHASES.items():
            if function == name and file.endswith(suffix):
                phases[phase] = max(phases.get(phase, 0.0), cumulative)
    print(f"imports (rece_lightning.cli, Lightning, torch, diffusers): {imported:.1f} s")
    for phase in PHASES.values():
        print(f"{phase}: {phases.get(phase, 0.0):.1f} s")
    print(f"Trainer and the rest: {total - sum(phases.values()):.1f} s")
    print(f"whole fit after the imports: {total:.1f} s; peak RSS {peak_rss_gb():.2f} GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", help="dtype of the timed runs")
    parser.add_argument("--memory-dtype", default="float16", help="dtype of the erase-only memory run")
    parser.add_argument("--device", default="cpu", help="where the recipe runs (cpu, cuda)")
    parser.add_argument("--family", default="sd14", choices=("sd14", "sd2", "sdxl", "flux", "sd3"))
    parser.add_argument("--size", default="full", choices=("full", "tiny"))
    parser.add_argument("--fit-process", action="store_true", help="also time a whole `rece fit` process")
    parser.add_argument("--skip-erase-only", action="store_true", help="skip the erase-only memory run")
    parser.add_argument("--profile", action="store_true", help="where a `rece fit` without validation spends its "
                        "time: imports, loading, erase, checkpoints, exports, the Trainer (cProfile, in a child)")
    parser.add_argument("--erase-only", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--profile-fit", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.erase_only:
        erase_only(*args.erase_only, args.memory_dtype)
        return
    if args.profile_fit:
        profile_fit(*args.profile_fit)
        return
    model = ensure_model(args.family, args.size)
    if args.repeats:
        time_recipe(model, args.dtype, args.repeats, torch.device(args.device))
    if not args.skip_erase_only:
        with tempfile.TemporaryDirectory() as out:
            subprocess.run([sys.executable, __file__, "--memory-dtype", args.memory_dtype, "--erase-only", str(model),
                            out], check=True)
    if args.fit_process:
        fit_process(model, args.family)
    if args.profile:
        config = HERE.parent / "configs" / ("nudity_sdxl.yaml" if args.family == "sdxl" else "nudity.yaml")
        subprocess.run([sys.executable, __file__, "--profile-fit", str(model), str(config)], check=True)


if __name__ == "__main__":
    main()
