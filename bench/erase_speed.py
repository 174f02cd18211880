"""Time the nudity recipe (UCE init + 3 RECE iterations) on a random pipeline of one model family.

Model loading is excluded from the time; the recipe includes the text encodings, the gram matrix, the closed-form
solves and folding the edit into the text-reading layers. A second process runs an erase-only job (load the text
side, erase, export) and reports its load time and peak resident memory; ``--fit-process`` also times a whole
``rece fit --config configs/nudity.yaml`` process without validation (imports, loading, Trainer, writes).
Erasing loads only the text encoders and the text-reading layers (read from the safetensors files), never the
UNet / transformer.

    python bench/erase_speed.py [--family sd14|sd2|sdxl|flux|sd3|pixart-sigma|sana] [--size full|tiny] [--repeats 5]
                                [--dtype float32] [--device cuda] [--fit-process]
    python bench/erase_speed.py --table [--families sdxl flux ...] [--text-layers N] [--memory-dtype float32]

``--table`` prints one table over the families, erase only: for each, a random folder with the released model's
shapes written with ``--size text`` (the denoiser reduced to its text-reading layers, which is all erasing reads;
``rece_lightning/random_pipeline/text_side.py``), then one erase-only process (load the text side, UCE + 3 RECE
iterations, export) whose wall time and peak RSS are reported, beside the size of the family's whole text side
(computed from the configs on the meta device). ``--text-layers N`` keeps only the first N layers of every text
encoder over 1 B parameters (T5-XXL, Gemma-2; full width and vocabulary; the CLIP encoders stay whole) so that the
run fits this machine and its time; the table says how many were kept.

Random pipelines (``python -m rece_lightning.random_pipeline``, float16; SD-1.4 ~2 GB, SDXL ~7 GB, Flux ~33 GB in
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
    export_edit(editor, out, ["kv_weights", "edit_map", "lora"])
    done = time.perf_counter()
    peak = peak_rss_gb()
    layers = module.family.text_layers()
    print("RESULT " + json.dumps({"family": module.family.name, "load": loaded - imported, "erase": erased - loaded,
                                  "export": done - erased, "rss": peak, "width": module.family.width,
                                  "layers": f"{len(layers)} × {tuple(layers[0].module.weight.shape)}",
                                  "denoiser": not module.family.text_only}), flush=True)
    print(f"erase-only run ({module.family.name}, {dtype}; denoiser loaded: {not module.family.text_only}): imports "
          f"{imported - start:.1f} s, load text side {loaded - imported:.1f} s, erase {erased - loaded:.1f} s, export "
          f"{done - erased:.1f} s; peak RSS {peak:.2f} GB")


def fit_process(model: Path) -> None:
    """Wall time of a whole ``rece fit`` process without validation (the user's command)."""
    with tempfile.TemporaryDirectory() as root:
        cmd = [sys.executable, "-m", "rece_lightning.cli", "fit", "--config", str(HERE.parent / "configs" / "nudity.yaml"),
               "--model.pretrained", str(model), "--model.validate_original", "false",
               "--trainer.default_root_dir", root, "--trainer.enable_progress_bar", "false"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        print(f"rece fit --config configs/nudity.yaml (no validation) as a whole process: "
              f"{time.perf_counter() - start:.1f} s")


FAMILY_NAMES = ("sd14", "sd2", "sdxl", "flux", "sd3", "hidream", "pixart-sigma", "sana")
TABLE_FAMILIES = ("sdxl", "pixart-sigma", "sana", "sd3", "flux", "hidream")
BIG_ENCODER = 1_000_000_000  # text encoders above this many parameters are the ones --text-layers shortens


@contextlib.contextmanager
def patched_init(text_layers: int | None = None, materialise: bool = True):
    """Inside: the random-pipeline builders keep only the first ``text_layers`` layers of every transformers text
    encoder over :data:`BIG_ENCODER` parameters (T5-XXL, Gemma-2; its layer list and config shortened before the
    weights exist; the CLIP encoders stay whole), or leave every component on the meta
    device (``materialise=False``: shapes only, no memory)."""
    from rece_lightning.random_pipeline import common

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
    from rece_lightning.random_pipeline import build_family

    with patched_init(materialise=False):
        pipe = build_family(family, "text", dtype=torch.bfloat16)
    return sum(p.numel() for name, c in pipe.components.items() if name.startswith("text_encoder") and c is not None
               for p in c.parameters())


def text_model(family: str, text_layers: int | None, dtype: torch.dtype) -> Path:
    """The ``--size text`` folder of ``family`` (cached under bench/.cache/)."""
    from rece_lightning.random_pipeline import build_family, save_text_side

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
    from rece_lightning.random_pipeline import BUILDERS

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
    parser.add_argument("--table", action="store_true", help="one erase-only table over --families")
    parser.add_argument("--families", nargs="+", default=list(TABLE_FAMILIES))
    parser.add_argument("--text-layers", type=int, default=None, help="keep the first N layers of each text encoder")
    parser.add_argument("--erase-only", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.erase_only:
        erase_only(*args.erase_only, args.memory_dtype)
        return
    if args.table:
        table(args.families, args.text_layers, args.memory_dtype)
        return
    model = ensure_model(args.family, args.size)
    if args.repeats:
        time_recipe(model, args.dtype, args.repeats, torch.device(args.device))
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, __file__, "--memory-dtype", args.memory_dtype, "--erase-only", str(model), out],
                       check=True)
    if args.fit_process:
        fit_process(model)


if __name__ == "__main__":
    main()
