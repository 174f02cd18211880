#!/usr/bin/env bash
# GPU checks of rece-lightning on a random pipeline with Stable Diffusion 1.4's shapes (no weights can be
# downloaded where this runs): the erase speed, `rece fit` with the nudity preset, `rece test` with the attack
# preset (paper budgets except the genetic search's generations, GA_GENERATIONS), and `rece validate` through the
# DDP strategy (NCCL). Random weights: the times are real measurements, the nudity rates and ASRs mean nothing.
#
#   bash bench/gpu_check.sh OUT_DIR PROMPTS_DIR
#
# PROMPTS_DIR holds the paper's nudity.csv and nudity-ring-a-bell.csv. Environment: MODEL (a diffusers folder;
# default: the benchmark's random SD-1.4 pipeline, built once), ACCEL (gpu), DTYPE (float16), LIMIT (16 prompts for
# fit, a quarter of them for test), GA_GENERATIONS (300), PYTHON (python3), FAMILY=flux (also the Flux erase and a
# 4-image validation, see the end; not run yet: no GPU was lent when it was written).
set -euo pipefail
OUT=${1:?usage: gpu_check.sh OUT_DIR PROMPTS_DIR}
PROMPTS=${2:?usage: gpu_check.sh OUT_DIR PROMPTS_DIR}
ACCEL=${ACCEL:-gpu}
DTYPE=${DTYPE:-float16}
LIMIT=${LIMIT:-16}
GA_GENERATIONS=${GA_GENERATIONS:-300}
PYTHON=${PYTHON:-python3}
rece() { "$PYTHON" -m rece_lightning.lightning.cli "$@"; }
stamp() { date +%s.%N; }
took() { "$PYTHON" -c "import sys; print(f'{sys.argv[1]}: {float(sys.argv[3]) - float(sys.argv[2]):.1f} s')" "$@"; }
mkdir -p "$OUT"

if [ "$ACCEL" = gpu ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PYTHON" -c "import torch, diffusers, transformers, lightning; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'lightning', lightning.__version__)"
  "$PYTHON" bench/erase_speed.py --repeats 5 --device cuda --dtype float32
  "$PYTHON" bench/erase_speed.py --repeats 5 --device cuda --dtype float16
fi
MODEL=${MODEL:-bench/.cache/sd14-random}

t0=$(stamp)
rece fit --config configs/nudity.yaml --model.pretrained "$MODEL" --model.torch_dtype "$DTYPE" \
  --data.val_prompts "$PROMPTS/nudity.csv" --data.limit "$LIMIT" --trainer.accelerator "$ACCEL" \
  --trainer.default_root_dir "$OUT/nudity" --trainer.enable_progress_bar false
t1=$(stamp)
took "rece fit (nudity preset: UCE + 3 RECE iterations, $LIMIT prompts validated per stage, 5 stages)" "$t0" "$t1"
RUN="$OUT/nudity/lightning_logs/version_0"
CKPT="$RUN/checkpoints/last.ckpt"  # the last RECE iteration (random weights: every stage ties on "best")
ls "$RUN/export"

cat > "$OUT/attacks.yaml" <<YAML
model:
  attacks:
    - class_path: rece_lightning.attacks.NoAttack
    - class_path: rece_lightning.attacks.EmbeddingInversion
      init_args: {gamma: 0.1}
    - class_path: rece_lightning.attacks.RingABell
      init_args: {pairs: $PROMPTS/nudity-ring-a-bell.csv, eta: 3.0, mode: continuous}
    - class_path: rece_lightning.attacks.RingABell
      init_args: {pairs: $PROMPTS/nudity-ring-a-bell.csv, eta: 3.0, mode: discrete, length: 16, population: 200,
                  generations: $GA_GENERATIONS, mutation_rate: 0.25, crossover_rate: 0.5}
    - class_path: rece_lightning.attacks.UnlearnDiffAtk
      init_args: {prefix_tokens: 5, steps: 40, lr: 0.01, check_every: 10}
YAML
TEST_LIMIT=$(( (LIMIT + 3) / 4 ))
t0=$(stamp)
rece test --config configs/attack_nudity.yaml --config "$OUT/attacks.yaml" --model.pretrained "$MODEL" \
  --model.torch_dtype "$DTYPE" --ckpt_path "$CKPT" --data.test_prompts "$PROMPTS/nudity.csv" \
  --data.limit "$TEST_LIMIT" --trainer.accelerator "$ACCEL" --trainer.default_root_dir "$OUT/attack" \
  --trainer.enable_progress_bar false
t1=$(stamp)
took "rece test (5 attacks, GA $GA_GENERATIONS generations, $TEST_LIMIT prompts)" "$t0" "$t1"
find "$OUT/attack" -name "prompts.csv" | sort

t0=$(stamp)
rece validate --config configs/nudity.yaml --model.pretrained "$MODEL" --model.torch_dtype "$DTYPE" \
  --data.val_prompts "$PROMPTS/nudity.csv" --data.limit "$LIMIT" --trainer.accelerator "$ACCEL" \
  --trainer.strategy ddp --trainer.devices 1 --ckpt_path "$CKPT" --trainer.default_root_dir "$OUT/validate" \
  --trainer.enable_progress_bar false
t1=$(stamp)
took "rece validate through the DDP strategy ($LIMIT prompts)" "$t0" "$t1"

# ---- Flux (issue 10): FAMILY=flux runs the erase and a 4-image validation on a random FLUX.1-dev-shaped pipeline
# (bfloat16, built once under bench/.cache/flux-full-random: ~33 GB on disk, ~10 min on 16 cores), printing the time
# and peak GPU memory of each. FLUX_MODEL overrides the folder (e.g. a real FLUX.1-dev).
if [ "${FAMILY:-}" = flux ] && [ "$ACCEL" = gpu ]; then
  "$PYTHON" bench/erase_speed.py --family flux --size full --device cuda --dtype bfloat16 --memory-dtype bfloat16 --repeats 3
  FLUX_MODEL=${FLUX_MODEL:-bench/.cache/flux-full-random}
  printf 'prompt,evaluation_seed\nnudity,1\na photo of a woman,2\na painting of a nude,3\na cat on a beach,4\n' > "$OUT/nudity.csv"
  "$PYTHON" - "$FLUX_MODEL" "$OUT/nudity.csv" <<'PY'
import sys, time, torch
from rece_lightning.lightning.module import RECEModule
from rece_lightning.lightning.data import PromptDataset
model, csv = sys.argv[1], sys.argv[2]
module = RECEModule(pretrained=model, concepts=["nudity"], torch_dtype="bfloat16", validate_original=False,
                    generation={"num_inference_steps": 28, "guidance_scale": 3.5, "height": 1024, "width": 1024})
module.to("cuda"); module.editor.to("cuda"); torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
t = time.perf_counter(); module.erase(); torch.cuda.synchronize()
print(f"flux erase (text side only on the GPU): {time.perf_counter() - t:.2f} s, peak GPU memory {torch.cuda.max_memory_allocated() / 1024**3:.1f} GiB")
t = time.perf_counter(); module.load_denoiser(); module.to("cuda"); torch.cuda.synchronize()
print(f"flux transformer + VAE load: {time.perf_counter() - t:.1f} s")
rows = PromptDataset(csv).rows
torch.cuda.reset_peak_memory_stats(); t = time.perf_counter()
images = module.generate([r["prompt"] for r in rows], [r["evaluation_seed"] for r in rows]); torch.cuda.synchronize()
print(f"flux 4-image validation (28 steps, 1024 px): {time.perf_counter() - t:.1f} s, peak GPU memory {torch.cuda.max_memory_allocated() / 1024**3:.1f} GiB, {len(images)} images")
PY
fi
