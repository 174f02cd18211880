"""UnlearnDiffAtk (Zhang et al., "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still Easy To
Generate Unsafe Images … For Now", ECCV 2024): optimise a few prefix tokens so that the erased model denoises
noised images of the concept — made by the original model — as the original model would."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rece_lightning.attacks.base import AdversarialInput, Attack
from rece_lightning.attacks.ring_a_bell import search_vocabulary

if TYPE_CHECKING:
    from rece_lightning.module import RECEModule

Judge = Callable[[list, list[dict[str, Any]]], list[bool]]


class UnlearnDiffAtk(Attack):
    """Prefix-token attack on the diffusion objective.

    For each row: the original (unedited) model generates the row's image latent ``x₀`` with the row's seed; then
    ``prefix_tokens`` token slots before the prompt are optimised with Adam over a relaxed one-hot ``R`` (K × V): the
    forward pass uses the hard tokens ``onehot(argmax R)`` and the gradient flows to ``R`` (straight-through). The
    loss is ``‖ε_θ'(x_t, t, E(prefix + prompt)) − ε‖²`` on the edited model with random ``t`` and ``ε``. Every
    ``check_every`` steps the hard prefix is scored on a fixed set of (t, ε) and, when a ``judge`` is given,
    rendered and judged; the attack stops early on success and returns the best prefix seen.

    Args:
        prefix_tokens: K, the number of adversarial tokens (paper: 5).
        steps: optimisation steps per prompt (paper: 40).
        lr: Adam learning rate on the relaxed one-hot.
        check_every: steps between checks (fixed-noise objective, and the judge).
        eval_timesteps: size of the fixed (t, ε) set of the reported objective.
        seed: makes the initial tokens, timesteps and noise deterministic.
        judge: ``judge(images, rows) -> [concept present?]``; set by the test stage from its evaluation protocol.
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
    ) -> None:
        self.prefix_tokens, self.steps, self.lr = prefix_tokens, steps, lr
        self.check_every, self.eval_timesteps, self.seed, self.judge = check_every, eval_timesteps, seed, judge

    # ---------------------------------------------------------------------------------------------- helpers
    @torch.no_grad()
    def _original_latents(self, module: RECEModule, row: dict[str, Any]) -> Tensor:
        """x₀ of the row's prompt and seed from the unedited model (the edit is restored afterwards)."""
        module.editor.restore_original()
        try:
            device = module.pipeline._execution_device
            generator = torch.Generator("cpu" if device.type == "mps" else device).manual_seed(int(row["seed"]))
            g = module.generation
            out = module.pipeline(prompt=[row["prompt"]], generator=[generator], output_type="latent",
                                  num_inference_steps=g.num_inference_steps,
                                  guidance_scale=row.get("guidance") or g.guidance_scale,
                                  height=g.height, width=g.width)
            return out.images[0:1].float()
        finally:
            module.editor.apply()

    def _ids(self, module: RECEModule, prompt: str) -> Tensor:
        """[start] + K placeholders + prompt tokens + [end] + padding (placeholders are replaced by the attack)."""
        tok = module.pipeline.tokenizer
        ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids[0]
        k = self.prefix_tokens
        return torch.cat([ids[:1], ids[1:2].repeat(k), ids[1:-k]])  # keeps the length; truncates the tail

    def _encode(self, module: RECEModule, ids: Tensor, prefix: Tensor) -> Tensor:
        """Text embeddings with the K slots after the start token replaced by ``prefix`` (K, d), differentiably."""
        encoder = module.pipeline.text_encoder
        table = encoder.get_input_embeddings()
        k = self.prefix_tokens

        def replace(_module, _inputs, output):
            output = output.clone()
            output[:, 1 : k + 1] = prefix.to(output.dtype)
            return output

        handle = table.register_forward_hook(replace)
        try:
            return encoder(ids[None].to(prefix.device))[0]
        finally:
            handle.remove()

    def _loss(self, module: RECEModule, cond: Tensor, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        scheduler = module.pipeline.scheduler
        noisy = scheduler.add_noise(x0, noise, t)
        unet = module.pipeline.unet
        pred = unet(noisy.to(unet.dtype), t.to(noisy.device), encoder_hidden_states=cond.expand(len(t), -1, -1)).sample
        return F.mse_loss(pred.float(), noise.float())

    # ----------------------------------------------------------------------------------------------- attack
    def attack_row(self, module: RECEModule, row: dict[str, Any]) -> AdversarialInput:
        device = module.pipeline._execution_device
        g = torch.Generator().manual_seed(self.seed + int(row.get("row", 0)))
        tok = module.pipeline.tokenizer
        table = module.pipeline.text_encoder.get_input_embeddings().weight.detach()
        vocab = torch.tensor(search_vocabulary(tok))
        x0 = self._original_latents(module, row).to(device)
        ids = self._ids(module, row["prompt"])
        n_train = module.pipeline.scheduler.config.num_train_timesteps
        eval_t = torch.randint(0, n_train, (self.eval_timesteps,), generator=g).to(device)
        eval_noise = torch.randn((self.eval_timesteps, *x0.shape[1:]), generator=g).to(device, x0.dtype)
        x0_eval = x0.expand(self.eval_timesteps, -1, -1, -1)

        start = vocab[torch.randint(len(vocab), (self.prefix_tokens,), generator=g)]
        logits = torch.zeros(self.prefix_tokens, table.shape[0], device=device)
        logits[torch.arange(self.prefix_tokens), start] = 1.0
        logits.requires_grad_(True)
        mask = torch.full((table.shape[0],), float("-inf"), device=device)
        mask[vocab] = 0.0
        optimiser = torch.optim.Adam([logits], lr=self.lr)

        def hard_tokens() -> Tensor:
            return (logits.detach() + mask).argmax(-1)

        @torch.no_grad()
        def objective(tokens: Tensor) -> float:
            cond = self._encode(module, ids, table[tokens].float())
            return float(self._loss(module, cond, x0_eval, eval_t, eval_noise))

        best_tokens, best = start.to(device), objective(start.to(device))
        initial, success, steps_run = best, False, 0
        for step in range(1, self.steps + 1):
            steps_run = step
            soft = torch.softmax(logits + mask, -1)
            hard = F.one_hot(soft.argmax(-1), table.shape[0]).to(soft.dtype)
            onehot = hard + soft - soft.detach()  # straight-through: hard tokens forward, soft gradient
            with torch.enable_grad():
                cond = self._encode(module, ids, onehot @ table.float())
                t = torch.randint(0, n_train, (1,), generator=g).to(device)
                noise = torch.randn(x0.shape, generator=g).to(device, x0.dtype)
                loss = self._loss(module, cond, x0, t, noise)
                optimiser.zero_grad()
                loss.backward()
            optimiser.step()
            if step % self.check_every == 0 or step == self.steps:
                tokens = hard_tokens()
                value = objective(tokens)
                if value < best:
                    best, best_tokens = value, tokens
                if self.judge is not None:
                    text = _prompt_text(tok, tokens, row["prompt"])
                    image = module.generate([text], [int(row["seed"])], [row.get("guidance")])
                    if self.judge(image, [row])[0]:
                        best_tokens, success = tokens, True
                        break
        return AdversarialInput(
            prompt=_prompt_text(tok, best_tokens, row["prompt"]),
            info={"initial_objective": initial, "objective": best, "steps": steps_run, "early_success": success,
                  "prefix_tokens": best_tokens.tolist()},
        )

    def run(self, module: RECEModule, rows: list[dict[str, Any]]) -> list[AdversarialInput]:
        # the test stage runs under inference mode; this attack needs gradients
        with torch.inference_mode(False), torch.enable_grad():
            return [self.attack_row(module, row) for row in rows]


def _prompt_text(tokenizer, tokens: Tensor, prompt: str) -> str:
    return f"{tokenizer.decode(tokens.tolist()).strip()} {prompt}"
