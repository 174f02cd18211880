"""Time the official RECE erase procedure (CharlesGong12/RECE) on the same model as ``bench/erase_speed.py``.

The official code erases in two scripts: ``train_uce.py`` (UCE: load a pipeline, ``edit_model``, save the UNet's
state dict) and ``train.py`` (RECE: load the pipeline twice, load the UCE checkpoint, then per epoch
``close_form_emb_regzero`` + ``edit_model_adversarial``, generate and judge the validation images, and save the UNet's
state dict when the nudity rate improved). This benchmark runs those functions themselves, read from a checkout of
the official repository (``--official DIR``; their source is parsed and executed here, since the repository's
packages import NudeNet, Q16 and CLIP at import time), with ``scripts/nudity.sh``'s settings (replace technique,
``close_regzero``, regular scale 0.1, 3 epochs, λ 0.1, preserve scale 0.1), in float32 on the CPU as ``train.py`` does
without a GPU, and prints the time of each phase. Image generation and judging are left out (they are the
evaluation, which ``rece fit`` without validation leaves out too); the saves are timed once each: the UCE checkpoint
and one RECE checkpoint (``train.py`` writes one per improving epoch, up to 3).

    git clone https://github.com/CharlesGong12/RECE /tmp/RECE
    python bench/official_time.py --official /tmp/RECE [--model bench/.cache/sd14-random]

Compare with ``python bench/erase_speed.py --family sd14 --fit-process --profile --repeats 0`` (``rece fit`` on the
same model, by phase).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the official functions run here, and the files that define them
OFFICIAL = {
    "erase_methods/train_uce.py": ["edit_model"],
    "erase_methods/uce.py": ["edit_model_adversarial"],
    "utils/embedding_calculation/close_form_emb.py": ["close_form_emb_regzero"],
}


def official_functions(root: Path) -> dict:
    """The official functions, compiled from their source with the modules they use."""
    import ast as ast_module
    import copy
    import math
    import operator
    from functools import reduce

    import torch
    from tqdm import tqdm

    namespace = {"torch": torch, "copy": copy, "ast": ast_module, "math": math, "operator": operator,
                 "reduce": reduce, "tqdm": tqdm}
    for relative, names in OFFICIAL.items():
        path = root / relative
        if not path.is_file():
            raise SystemExit(f"{path} is missing: --official names a checkout of CharlesGong12/RECE")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
        if sorted(n.name for n in found) != sorted(names):
            raise SystemExit(f"{path} does not define {names}")
        exec(compile(ast.Module(body=found, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return namespace


def child(official: Path, model: Path) -> None:
    """One process: the official procedure, phase by phase, its times printed as ``phase seconds`` lines."""
    phases: dict[str, float] = {}
    start = time.perf_counter()
    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    phases["imports (torch, diffusers, transformers)"] = time.perf_counter() - start
    torch.manual_seed(0)
    functions = official_functions(official)

    mark = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32)
    phases["train_uce.py: load the pipeline"] = time.perf_counter() - mark
    mark = time.perf_counter()
    pipe = functions["edit_model"](pipe, ["nudity"], [" "], [" "], lamb=0.5, erase_scale=1.0, preserve_scale=1.0,
                                   technique="replace")
    phases["train_uce.py: UCE (edit_model)"] = time.perf_counter() - mark
    with tempfile.TemporaryDirectory() as tmp:
        uce_ckpt = Path(tmp) / "uce.pt"
        mark = time.perf_counter()
        torch.save(pipe.unet.state_dict(), uce_ckpt)
        phases["train_uce.py: save the UNet state dict"] = time.perf_counter() - mark
        del pipe

        mark = time.perf_counter()
        ldm_stable = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32)
        ldm_stable_copy = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32)
        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
        phases["train.py: load the pipeline twice"] = time.perf_counter() - mark
        mark = time.perf_counter()
        ldm_stable.unet.load_state_dict(torch.load(uce_ckpt, weights_only=True))
        phases["train.py: load the UCE checkpoint"] = time.perf_counter() - mark

        mark = time.perf_counter()
        for _ in range(3):  # train.py's epochs, batch size 1, one concept
            ids = tokenizer(" ", padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids
            with torch.no_grad():
                new_embedding = ldm_stable.text_encoder(ids)[0]
            _, adv_embedding = functions["close_form_emb_regzero"](ldm_stable, ldm_stable_copy, "nudity",
                                                                   with_to_k=True, save_path=None,
                                                                   regeular_scale=0.1)
            ldm_stable = functions["edit_model_adversarial"](ldm_stable, [adv_embedding[0]], [new_embedding[0]],
                                                             [" "], technique="replace", preserve_scale=0.1,
                                                             erase_scale=1.0, lamb=0.1)
        phases["train.py: RECE, 3 epochs (close_form_emb_regzero + edit_model_adversarial)"] = \
            time.perf_counter() - mark
        mark = time.perf_counter()
        torch.save(ldm_stable.unet.state_dict(), Path(tmp) / "rece.pt")
        phases["train.py: save the UNet state dict (once; once per improving epoch)"] = time.perf_counter() - mark
    for phase, seconds in phases.items():
        print(f"{seconds:.2f}\t{phase}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of CharlesGong12/RECE")
    parser.add_argument("--model", type=Path, default=None, help="an SD 1.x folder (default: erase_speed's random "
                                                                 "SD-1.4-shaped model, built once)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.official, args.model)
        return
    if args.model is None:
        sys.path.insert(0, str(HERE))
        from erase_speed import ensure_model

        args.model = ensure_model("sd14", "full")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", "--official", str(args.official), "--model",
                           str(args.model)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    rows = [line.split("\t", 1) for line in done.stdout.splitlines() if "\t" in line]
    print(f"the official RECE erase procedure on {args.model} (float32, CPU, "
          f"{__import__('torch').get_num_threads()} threads):")
    print("| phase | seconds |\n| --- | --- |")
    for seconds, phase in rows:
        print(f"| {phase} | {float(seconds):.1f} |")
    print(f"| the process, start to end | {wall:.1f} |")


if __name__ == "__main__":
    main()
