"""Train the testbed: attribute classifier, tiny VAE, text-conditional UNet.

Usage::

    python -m rece_lightning.testbed.train --stages classifier vae unet \
        --unet-steps 4000 --out rece_lightning/testbed/weights

Everything is seeded; every save goes through a temporary folder and an atomic
rename, so an interrupted run never leaves half-written weights.  Checkpoints
of the UNet stage (EMA weights) are complete, loadable pipeline folders.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler
from safetensors.torch import save_file

from rece_lightning.files import atomic_dir

from .architectures import build_scheduler, build_unet, build_vae
from .classifier import AttributeClassifier
from .data import make_set
from .pipeline import write_pipeline_folder
from .text import encode_prompts, load_text_encoder, load_tokenizer
from .world import ATTRIBUTES

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _lr_at(step: int, total: int, base: float, warmup: int, constant: bool = False) -> float:
    """Linear warmup, then cosine decay to 5% (or constant, so any prefix of a run is reproducible)."""
    if step < warmup:
        return base * (step + 1) / warmup
    if constant:
        return base
    frac = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


# --------------------------------------------------------------------------- classifier
def train_classifier(out: str, steps: int, seed: int, n_train: int = 20000, batch: int = 128) -> float:
    """Train and save the attribute classifier; return its worst per-attribute accuracy."""
    torch.manual_seed(seed)
    _log(f"classifier: rendering {n_train} images")
    data = make_set(n_train, seed=seed + 11)
    x_all, y_all = _to_tensor(data.images), torch.from_numpy(data.labels)
    model = AttributeClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    names = list(ATTRIBUTES)
    t0 = time.time()
    for step in range(steps):
        _set_lr(opt, _lr_at(step, steps, 2e-3, 100))
        idx = torch.randint(0, len(x_all), (batch,), generator=gen)
        x = x_all[idx]
        # mild robustness augmentation: noise, brightness, slight blur
        x = x * (1 + 0.06 * (torch.rand(batch, 1, 1, 1, generator=gen) - 0.5))
        x = x + 0.03 * torch.rand(batch, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
        blur = torch.rand(batch, generator=gen) < 0.3
        if blur.any():
            xb = x[blur]
            x[blur] = 0.5 * xb + 0.125 * (xb.roll(1, -1) + xb.roll(-1, -1) + xb.roll(1, -2) + xb.roll(-1, -2))
        x = x.clamp(0, 1)
        logits = model(x)
        loss = sum(F.cross_entropy(logits[k], y_all[idx, i]) for i, k in enumerate(names))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            _log(f"classifier step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    model.eval()
    test = make_set(2000, seed=seed + 999)
    with torch.no_grad():
        logits = model(_to_tensor(test.images))
    accs = {k: (logits[k].argmax(-1).numpy() == test.labels[:, i]).mean() for i, k in enumerate(names)}
    _log("classifier fresh-render accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in accs.items()))
    with atomic_dir(os.path.join(out, "classifier")) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(tmp, "model.safetensors"))
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as fh:
            json.dump(model.config(), fh, indent=2)
    return float(min(accs.values()))


# --------------------------------------------------------------------------- VAE
def train_vae(out: str, steps: int, seed: int, n_train: int = 10000, batch: int = 32) -> AutoencoderKL:
    """Train the x2 KL autoencoder, fit its latent scaling factor and save it."""
    torch.manual_seed(seed)
    _log(f"vae: rendering {n_train} images")
    x_all = _to_tensor(make_set(n_train, seed=seed + 21).images) * 2 - 1
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        _set_lr(opt, _lr_at(step, steps, 1e-3, 50))
        x = x_all[torch.randint(0, len(x_all), (batch,), generator=gen)]
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        kl = dist.kl().mean() / z[0].numel()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            _log(f"vae step {step}/{steps} loss {loss.item():.4f} kl/dim {kl.item():.3f} ({time.time() - t0:.0f}s)")
    vae.eval()
    with torch.no_grad():
        sample = x_all[:2000]
        lat = vae.encode(sample).latent_dist.mean
        rec = vae.decode(lat).sample
        std = lat.std().item()
    vae.register_to_config(scaling_factor=float(1.0 / std))
    _log(
        f"vae: latent std {std:.4f} mean {lat.mean().item():.4f}; recon MSE(0..1) {((rec - sample) / 2).pow(2).mean():.5f}"
    )
    with atomic_dir(os.path.join(out, "pipeline", "vae")) as tmp:
        vae.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    return vae.float()


# --------------------------------------------------------------------------- UNet
class _Ema:
    """Exponential moving average of model parameters."""

    def __init__(self, model: torch.nn.Module, max_decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.max_decay = max_decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.max_decay, (1 + step) / (10 + step))
        ema_p = list(self.model.parameters())
        torch._foreach_mul_(ema_p, decay)
        torch._foreach_add_(ema_p, [p.detach() for p in model.parameters()], alpha=1 - decay)


def _encode_latents(vae: AutoencoderKL, images: np.ndarray, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            d = vae.encode(_to_tensor(images[i : i + batch]) * 2 - 1).latent_dist
            means.append(d.mean)
            stds.append(d.std)
    return torch.cat(means), torch.cat(stds)


def train_unet(
    out: str,
    steps: int,
    seed: int,
    n_train: int = 40000,
    batch: int = 32,
    lr: float = 7e-4,
    ckpt_every: int = 500,
    cfg_drop: float = 0.1,
    max_minutes: float | None = None,
) -> int:
    """Train the text-conditional UNet on VAE latents; save EMA pipeline checkpoints.

    The learning rate is constant after warmup and checkpoints hold EMA weights,
    so the checkpoint at step k equals the final result of a run with ``steps=k``.
    With ``max_minutes`` the run stops early (after saving) once the wall-clock
    budget is spent.  Returns the number of steps done.
    """
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(os.path.join(out, "pipeline", "vae"), torch_dtype=torch.float32).eval()
    sf = float(vae.config.scaling_factor)
    _log(f"unet: rendering {n_train} captioned images")
    data = make_set(n_train, seed=seed + 31, with_captions=True)
    _log("unet: encoding latents")
    lat_mean, lat_std = _encode_latents(vae, data.images)
    _log("unet: encoding captions")
    tokenizer, text_encoder = load_tokenizer(), load_text_encoder()
    uniq = sorted(set(data.captions))
    cap_index = {c: i for i, c in enumerate(uniq)}
    emb = encode_prompts(uniq + [""], tokenizer, text_encoder).half()
    null_id = len(uniq)
    ids = torch.tensor([cap_index[c] for c in data.captions])
    _log(f"unet: {len(uniq)} unique captions, embeddings {tuple(emb.shape)}")
    del text_encoder

    unet = build_unet()
    ema = _Ema(unet, 0.999)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    noise_sched = DDPMScheduler.from_config(build_scheduler().config)
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    run_loss = 0.0
    for step in range(steps):
        _set_lr(opt, _lr_at(step, steps, lr, 200, constant=True))
        idx = torch.randint(0, n_train, (batch,), generator=gen)
        z = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=gen)) * sf
        cap = ids[idx].clone()
        cap[torch.rand(batch, generator=gen) < cfg_drop] = null_id
        cond = emb[cap].float()
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,), generator=gen)
        noisy = noise_sched.add_noise(z, noise, t)
        pred = unet(noisy, t, cond).sample
        weight = (snr[t].clamp(max=5.0) / snr[t]).float()  # min-SNR-5 for epsilon targets
        loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.update(unet, step)
        run_loss += loss.item()
        if (step + 1) % 50 == 0:
            el = time.time() - t0
            _log(f"unet step {step + 1}/{steps} loss {run_loss / 50:.4f} {(step + 1) / el:.2f} it/s ({el:.0f}s)")
            run_loss = 0.0
        out_of_time = max_minutes is not None and time.time() - t0 > 60 * max_minutes
        if (step + 1) % ckpt_every == 0 or step == steps - 1 or out_of_time:
            write_pipeline_folder(os.path.join(out, "pipeline"), vae, ema.model)
            _log(f"unet: saved EMA checkpoint at step {step + 1}")
        if out_of_time:
            _log(f"unet: time budget spent; stopped at step {step + 1} (reproduce with --unet-steps {step + 1})")
            return step + 1
    return steps


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: shipped weights folder)")
    ap.add_argument("--stages", nargs="+", default=["classifier", "vae", "unet"], choices=["classifier", "vae", "unet"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--classifier-steps", type=int, default=1500)
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--unet-steps", type=int, default=6000)
    ap.add_argument("--unet-batch", type=int, default=32)
    ap.add_argument("--unet-lr", type=float, default=7e-4)
    ap.add_argument("--unet-data", type=int, default=40000)
    ap.add_argument("--ckpt-every", type=int, default=500)
    ap.add_argument("--unet-max-minutes", type=float, default=None, help="stop the UNet stage after this long")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    t_start = time.time()
    if "classifier" in args.stages:
        train_classifier(args.out, args.classifier_steps, args.seed)
    if "vae" in args.stages:
        train_vae(args.out, args.vae_steps, args.seed)
    if "unet" in args.stages:
        train_unet(
            args.out,
            args.unet_steps,
            args.seed,
            n_train=args.unet_data,
            batch=args.unet_batch,
            lr=args.unet_lr,
            ckpt_every=args.ckpt_every,
            max_minutes=args.unet_max_minutes,
        )
    _log(f"done in {(time.time() - t_start) / 60:.1f} min")


if __name__ == "__main__":
    main()
