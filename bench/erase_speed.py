"""Time the nudity recipe (UCE init + 3 RECE iterations) on a random pipeline of one model family.

Model loading is excluded from the time; the recipe includes the text encodings, the gram matrix, the closed-form
solves and folding the edit into the text-reading layers. A second process runs an erase-only job (load the text
side, erase, export) and reports its load time and peak resident memory; ``--fit-process`` also times a whole
``rece fit --config configs/nudity.yaml`` (``nudity_sdxl.yaml`` for SDXL) process without validation (imports,
loading, Trainer, writes) and prints its peak memory, its checkpoints' and exports' sizes and the run folder's size.
Erasing loads only the text encoders and the text-reading layers (read from the safetensors files), never the
UNet / transformer.

    python bench/erase_speed.py [--family sd14|sd2|sdxl|flux|sd3|pixart-sigma|sana] [--size full|tiny] [--repeats 5]
                                [--dtype float32] [--device cuda] [--fit-process] [--profile] [--skip-erase-only]
    python bench/erase_speed.py --table [--families sdxl flux ...] [--text-layers N] [--memory-dtype float32]

``--table`` prints one table over the families, erase only: for each, a random folder with the released model's
shapes written with ``--size text`` (the denoiser reduced to its text-reading layers, which is all erasing reads;
``rece_lightning/models/random_pipeline/text_side.py``), then one erase-only process (load the text side, UCE + 3 RECE
iterations, export) whose wall time and peak RSS are reported, beside the size of the family's whole text side
(computed from the configs on the meta device). ``--text-layers N`` keeps only the first N layers of every text
encoder over 1 B parameters (T5-XXL, Gemma-2; full width and vocabulary; the CLIP encoders stay whole) so that the
run fits this machine and its time; the table says how many were kept.

``--profile`` runs the same ``rece fit`` under cProfile in a child process and prints its time by phase (imports,
loading the text side, erase, checkpoints, exports, the Trainer and the rest).

Random pipelines (``python -m rece_lightning.models.random_pipeline``, float16; SD-1.4 ~2 GB, SDXL ~7 GB, Flux ~33 GB in
bfloat16, SD3-medium ~15 GB in bfloat16) are cached under bench/.cache/ (ignored by git).
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
    from rece_lightning.models.random_pipeline import build_family

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
    from rece_lightning.lightning.module import RECEModule

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
    from rece_lightning.artefacts.export import export_edit
    from rece_lightning.lightning.module import RECEModule

    imported = time.perf_counter()
    module = RECEModule(pretrained=model, torch_dtype=dtype, **RECIPE)
    loaded = time.perf_counter()
    editor = module.erase()
    erased = time.perf_counter()
    written = export_edit(editor, out, ["kv_weights", "edit_map", "lora"])
    done = time.perf_counter()
    peak = peak_rss_gb()
    layers = module.family.text_layers()
    print("RESULT " + json.dumps({"family": module.family.name, "load": loaded - imported, "erase": erased - loaded,
                                  "export": done - erased, "rss": peak, "width": module.family.width,
                                  "layers": f"{len(layers)} × {tuple(layers[0].module.weight.shape)}",
                                  "denoiser": not module.family.text_only}), flush=True)
    from rece_lightning.artefacts.export import read_metadata

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
        cmd = [sys.executable, "-m", "rece_lightning.lightning.cli", "fit", "--config", str(HERE.parent / "configs" / config),
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
    ("rece_lightning/lightning/module.py", "__init__"): "load the text side (RECEModule.__init__)",
    ("rece_lightning/recipes/paper.py", "run"): "erase (the recipe's stages)",
    ("lightning/pytorch/trainer/trainer.py", "save_checkpoint"): "checkpoints (Trainer.save_checkpoint)",
    ("rece_lightning/lightning/callbacks/export.py", "on_fit_end"): "exports (ExportEdit)",
}


def profile_fit(model: str, config: str) -> None:
    """Child process: import the CLI (timed), run ``rece fit`` without validation under cProfile and print where
    its time goes, by phase (cumulative times of the functions in :data:`PHASES`; the rest is the Trainer's)."""
    import cProfile
    import pstats

    start = time.perf_counter()
    from rece_lightning.lightning.cli import main as rece

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
    print(f"imports (rece_lightning.lightning.cli, Lightning, torch, diffusers): {imported:.1f} s")
    for phase in PHASES.values():
        print(f"{phase}: {phases.get(phase, 0.0):.1f} s")
    print(f"Trainer and the rest: {total - sum(phases.values()):.1f} s")
    print(f"whole fit after the imports: {total:.1f} s; peak RSS {peak_rss_gb():.2f} GB")


FAMILY_NAMES = ("sd14", "sd2", "sdxl", "flux", "sd3", "hidream", "pixart-sigma", "sana")
TABLE_FAMILIES = ("sdxl", "pixart-sigma", "sana", "sd3", "flux", "hidream")
BIG_ENCODER = 1_000_000_000  # text encoders above this many parameters are the ones --text-layers shortens


@contextlib.contextmanager
def patched_init(text_layers: int | None = None, materialise: bool = True):
    """Inside: the random-pipeline builders keep only the first ``text_layers`` layers of every transformers text
    encoder over :data:`BIG_ENCODER` parameters (T5-XXL, Gemma-2; its layer list and config shortened before the
    weights exist; the CLIP encoders stay whole), or leave every component on the meta
    device (``materialise=False``: shapes only, no memory)."""
    from rece_lightning.models.random_pipeline import common

    original = common.fast_random_init

    def init(module, seed, dtype):
        config = getattr(module, "config", None)
        key = next((k for k in ("num_hidden_layers", "num_layers") if hasattr(config, k)), None)
        big = sum(p.numel() for p in module.parameters()) > BIG_ENCODER
        if text_layers is not None and key is not None and hasattr(module, "get_input_embeddings") and big:
            total = getattr(config, key)
            for parent in module.modules():
                for name, child in parent.named_children():
                    if isinstance(child, torch.nn.ModuleList) and len(child) == total:
                        setattr(parent, name, child[:text_layers])
            setattr(config, key, text_layers)
            if getattr(config, "layer_types", None) is not None:  # Gemma-2: one attention type per layer
                config.layer_types = config.layer_types[:text_layers]
        return original(module, seed, dtype) if materialise else module

    common.fast_random_init = init
    try:
        yield
    finally:
        common.fast_random_init = original


def text_side_params(family: str) -> int:
    """Parameters of the family's text encoders at full size (built on the meta device)."""
    from rece_lightning.models.random_pipeline import build_family

    with patched_init(materialise=False):
        pipe = build_family(family, "text", dtype=torch.bfloat16)
    return sum(p.numel() for name, c in pipe.components.items() if name.startswith("text_encoder") and c is not None
               for p in c.parameters())


def text_model(family: str, text_layers: int | None, dtype: torch.dtype) -> Path:
    """The ``--size text`` folder of ``family`` (cached under bench/.cache/)."""
    from rece_lightning.models.random_pipeline import build_family, save_text_side

    depth = "all" if text_layers is None else text_layers
    folder = HERE / ".cache" / f"{family}-text-{depth}-{str(dtype).split('.')[-1]}"
    if not (folder / "model_index.json").is_file():
        print(f"building {folder.name} (once) ...", flush=True)
        with patched_init(text_layers):
            pipe = build_family(family, "text", dtype=dtype)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent))
        save_text_side(pipe, tmp)
        del pipe
        tmp.rename(folder)
    return folder


def gemm_gflops(dtype: torch.dtype, n: int = 1024) -> float:
    """Throughput of one 64 × n × n matrix product in ``dtype`` on this CPU (after one warm-up product)."""
    a, b = torch.randn(64, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    start = time.perf_counter()
    a @ b
    return 2 * 64 * n * n / (time.perf_counter() - start) / 1e9


def table(families: list[str], text_layers: int | None, memory_dtype: str) -> None:
    """One erase-only row per family (see the module docstring)."""
    from rece_lightning.models.random_pipeline import BUILDERS

    dtype = getattr(torch, memory_dtype)
    print(f"matrix product on this CPU ({torch.get_num_threads()} threads): " + ", ".join(
        f"{d} {gemm_gflops(getattr(torch, d)):.2f} GFLOPS" for d in ("float32", "bfloat16", "float16")), flush=True)
    head = ("family", "edited layers (count × first shape)", "width", "text side at full size", "text layers run",
            "process wall s", "load / erase / export s", "peak RSS GB")
    print(f"\nerase only, {memory_dtype}, one process per family (rows print as they finish):\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(" --- " for _ in head) + "|", flush=True)
    for family in families:
        if family not in BUILDERS:
            print(f"| {family} | no random builder on this branch |" + " |" * (len(head) - 2), flush=True)
            continue
        params = text_side_params(family)
        model = text_model(family, text_layers, dtype)
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            run = subprocess.run([sys.executable, __file__, "--memory-dtype", memory_dtype, "--erase-only",
                                  str(model), out], check=True, capture_output=True, text=True)
            wall = time.perf_counter() - start
        result = json.loads(next(line[7:] for line in run.stdout.splitlines() if line.startswith("RESULT ")))
        assert not result["denoiser"], "erasing must not load the denoiser"
        row = (family, result["layers"], str(result["width"]), f"{params / 1e9:.2f} B ({params * 2 / 1e9:.1f} GB in bf16)",
               "all" if text_layers is None else f"first {text_layers} of encoders > 1 B", f"{wall:.1f}",
               f"{result['load']:.1f} / {result['erase']:.1f} / {result['export']:.1f}", f"{result['rss']:.2f}")
        print("| " + " | ".join(row) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", help="dtype of the timed runs")
    parser.add_argument("--memory-dtype", default="float16", help="dtype of the erase-only memory run")
    parser.add_argument("--device", default="cpu", help="where the recipe runs (cpu, cuda)")
    parser.add_argument("--family", default="sd14", choices=FAMILY_NAMES)
    parser.add_argument("--size", default="full", choices=("full", "tiny"))
    parser.add_argument("--fit-process", action="store_true", help="also time a whole `rece fit` process")
    parser.add_argument("--skip-erase-only", action="store_true", help="skip the erase-only memory run")
    parser.add_argument("--profile", action="store_true", help="where a `rece fit` without validation spends its "
                        "time: imports, loading, erase, checkpoints, exports, the Trainer (cProfile, in a child)")
    parser.add_argument("--table", action="store_true", help="one erase-only table over --families")
    parser.add_argument("--families", nargs="+", default=list(TABLE_FAMILIES))
    parser.add_argument("--text-layers", type=int, default=None, help="keep the first N layers of each text encoder")
    parser.add_argument("--erase-only", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--profile-fit", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.erase_only:
        erase_only(*args.erase_only, args.memory_dtype)
        return
    if args.profile_fit:
        profile_fit(*args.profile_fit)
        return
    if args.table:
        table(args.families, args.text_layers, args.memory_dtype)
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
