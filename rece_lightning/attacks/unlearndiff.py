"""UnlearnDiffAtk (Zhang et al., "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still Easy To
Generate Unsafe Images … For Now", ECCV 2024): optimise a few prefix tokens so that the erased model denoises
noised images of the concept — made by the original model — as the original model would.

Family-agnostic: the prefix is over the family's prompt vocabulary (:meth:`~rece_lightning.models.text.TextEncoder.vocabulary`;
SDXL: the CLIP vocabulary both encoders share, Flux: T5's), the conditioning and the denoiser's training loss are
the family's (:meth:`AttackTarget.prefix_conditioning`, :meth:`AttackTarget.denoising_loss`: DDPM ε-/v-prediction for
SD 1.x/2.x and SDXL, flow matching for Flux)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rece_lightning.attacks.base import AdversarialInput, Attack, AttackTarget, Judge
from rece_lightning.errors import RECEError
from rece_lightning.models.text import TextEncoder


class UnlearnDiffAtk(Attack):
    """Prefix-token attack on the diffusion objective.

    For each row: the original (unedited) model generates the row's image latent ``x₀`` with the row's seed; then
    ``prefix_tokens`` token slots before the prompt are optimised with Adam over a relaxed one-hot ``R`` (K × V): the
    forward pass uses the hard tokens ``onehot(argmax R)`` and the gradient flows to ``R`` (straight-through). The
    loss is the edited denoiser's training loss under ``E(prefix + prompt)`` (SD: ``‖ε_θ'(x_t, t, E) − ε‖²``) with
    random ``t`` and ``ε``. Every
    ``check_every`` steps the hard prefix is scored on a fixed set of (t, ε) and, when a ``judge`` is given,
    rendered and judged; the attack stops early on success and returns the best prefix seen.

    Args:
        prefix_tokens: K, the number of adversarial tokens (paper: 5).
        steps: optimisation steps per prompt (paper: 40).
        lr: Adam learning rate on the relaxed one-hot.
        check_every: steps between checks (fixed-noise objective, and the judge).
        eval_timesteps: size of the fixed (t, ε) set of the reported objective.
        seed: makes the initial tokens, timesteps and noise deterministic.
        judge: ``judge(images, rows) -> [concept present?]``; default: the target's judge (the test stage's
            evaluation protocol).
        batch_size: rows attacked together (one batched text-encoder and denoiser pass per step); memory grows with
            it (a step back-propagates through the denoiser for every row of the batch).
    """

    name = "unlearndiff"

    def __init__(
        self,
        prefix_tokens: int = 5,
        steps: int = 40,
        lr: float = 0.01,
        check_every: int = 10,
        eval_timesteps: int = 8,
        seed: int = 0,
        judge: Judge | None = None,
        batch_size: int = 8,
    ) -> None:
        if batch_size < 1:
            raise RECEError(f"UnlearnDiffAtk batch_size must be ≥ 1, got {batch_size}")
        self.prefix_tokens, self.steps, self.lr, self.batch_size = prefix_tokens, steps, lr, batch_size
        self.check_every, self.eval_timesteps, self.seed, self.judge = check_every, eval_timesteps, seed, judge

    # ---------------------------------------------------------------------------------------------- helpers
    @torch.no_grad()
    def _original_latents(self, target: AttackTarget, rows: list[dict[str, Any]]) -> Tensor:
        """x₀ of each row's prompt and seed from the unedited model (the edit is switched off meanwhile)."""
        with target.edit_off():
            return target.generate([r["prompt"] for r in rows], [int(r["seed"]) for r in rows],
                                   [r.get("guidance") for r in rows], output_type="latent").float()

    # ----------------------------------------------------------------------------------------------- attack
    def attack_rows(self, target: AttackTarget, rows: list[dict[str, Any]]) -> list[AdversarialInput]:
        """Attack a batch of rows at once. Row ``i`` draws its start tokens, timesteps and noise from its own
        generator (``seed + row``) and stops on its own success, so a row's result does not depend on its batch
        (beyond floating-point noise of batched kernels); the per-row losses are summed, which leaves each row's
        gradient, hence its Adam update, as if it were alone."""
        judge = self.judge if self.judge is not None else target.judge
        device = target.pipeline._execution_device
        text = target.text
        vocab = torch.tensor(text.vocabulary())
        n, k, n_vocab = len(rows), self.prefix_tokens, text.vocab_size
        generators = [torch.Generator().manual_seed(self.seed + int(row.get("row", 0))) for row in rows]
        x0 = self._original_latents(target, rows).to(device)
        prompts = [row["prompt"] for row in rows]
        guidance = [row.get("guidance") for row in rows]
        n_train = target.num_train_timesteps
        e = self.eval_timesteps
        eval_t, eval_noise, start = [], [], []
        for g in generators:
            eval_t.append(torch.randint(0, n_train, (e,), generator=g))
            eval_noise.append(torch.randn((e, *x0.shape[1:]), generator=g))
            start.append(vocab[torch.randint(len(vocab), (k,), generator=g)])
        eval_t_all = torch.stack(eval_t).to(device)  # (n, e)
        eval_noise_all = torch.stack(eval_noise).to(device, x0.dtype)  # (n, e, …)
        start_tokens = torch.stack(start).to(device)

        logits = torch.zeros(n, k, n_vocab, device=device)
        logits.scatter_(2, start_tokens[..., None], 1.0)
        logits.requires_grad_(True)
        mask = torch.full((n_vocab,), float("-inf"), device=device)
        mask[vocab.to(device)] = 0.0
        optimiser = torch.optim.Adam([logits], lr=self.lr)

        @torch.no_grad()
        def objectives(tokens: Tensor, idx: list[int]) -> list[float]:
            """The fixed-(t, ε) objective of the hard prefixes ``tokens[idx]`` of rows ``idx``."""
            repeated = [i for i in idx for _ in range(e)]
            cond = target.prefix_conditioning([prompts[i] for i in repeated], tokens[idx].repeat_interleave(e, 0))
            losses = target.denoising_loss(x0[idx].repeat_interleave(e, 0), eval_noise_all[idx].flatten(0, 1),
                                           eval_t_all[idx].flatten(), cond, [guidance[i] for i in repeated])
            return losses.view(len(idx), e).mean(1).tolist()

        best_tokens = [start_tokens[i] for i in range(n)]
        best = objectives(start_tokens, list(range(n)))
        initial = list(best)
        success, steps_run = [False] * n, [0] * n
        active = list(range(n))
        for step in range(1, self.steps + 1):
            for i in active:
                steps_run[i] = step
            soft = torch.softmax(logits[active] + mask, -1)
            hard = F.one_hot(soft.argmax(-1), n_vocab).to(soft.dtype)
            onehot = hard + soft - soft.detach()  # straight-through: hard tokens forward, soft gradient
            t = torch.cat([torch.randint(0, n_train, (1,), generator=generators[i]) for i in active]).to(device)
            noise = torch.cat([torch.randn((1, *x0.shape[1:]), generator=generators[i]) for i in active])
            cond = target.prefix_conditioning([prompts[i] for i in active], onehot)
            loss = target.denoising_loss(x0[active], noise.to(device, x0.dtype), t, cond,
                                         [guidance[i] for i in active]).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if step % self.check_every and step != self.steps:
                continue
            tokens = (logits.detach() + mask).argmax(-1)
            for i, value in zip(active, objectives(tokens, active), strict=True):
                if value < best[i]:
                    best[i], best_tokens[i] = value, tokens[i]
            if judge is not None:
                texts = [_prompt_text(text, tokens[i], rows[i]["prompt"]) for i in active]
                images = target.generate(texts, [int(rows[i]["seed"]) for i in active],
                                         [rows[i].get("guidance") for i in active])
                for i, hit in zip(list(active), judge(images, [rows[i] for i in active]), strict=True):
                    if hit:
                        best_tokens[i], success[i] = tokens[i], True
                        active.remove(i)
            if not active:
                break
        return [
            AdversarialInput(
                prompt=_prompt_text(text, best_tokens[i], rows[i]["prompt"]),
                info={"initial_objective": initial[i], "objective": best[i], "steps": steps_run[i],
                      "early_success": success[i], "prefix_tokens": best_tokens[i].tolist()},
            )
            for i in range(n)
        ]

    def run(self, target: AttackTarget, rows: list[dict[str, Any]]) -> list[AdversarialInput]:
        # the test stage runs under inference mode; this attack needs gradients
        with torch.inference_mode(False), torch.enable_grad():
            out: list[AdversarialInput] = []
            for begin in range(0, len(rows), self.batch_size):
                out += self.attack_rows(target, rows[begin : begin + self.batch_size])
            return out


def _prompt_text(text: TextEncoder, tokens: Tensor, prompt: str) -> str:
    return f"{text.decode(tokens.tolist()).strip()} {prompt}"
