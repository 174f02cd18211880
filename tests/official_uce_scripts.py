"""Re-statements of the official UCE scripts for Flux and HiDream, as oracles of the tests (float64, none of the
package's code).

Transcribed from github.com/rohitgandikota/unified-concept-editing (commit 28c81ed), ``trainscripts/``:

* ``uce_flux_edit.py``: edit every module whose name contains ``context_embedder`` or ``text_embedder.linear_1``;
  a text's embeddings are ``pipe.encode_prompt(...)``: ``[prompt_embeds[:, i], pooled_prompt_embeds]`` with
  ``i = tokenizer_2(...).attention_mask.sum() − 2``; the pooled one is used for a module of input width 768
  (``emb_idx = 1``), the token one otherwise. Here the module's *name* picks it (tiny pipelines have the same width
  in both spaces; at full size both tests agree).
* ``uce_hidream_edit.py``: edit every ``caption_projection.*.linear``; a text's embeddings are the Llama hidden
  states ``_get_llama3_prompt_embeds(...)[k][:, i]`` for each ``k`` of ``transformer.config.llama_layers`` (``i`` from
  ``tokenizer_4``'s mask) and then T5's ``_get_t5_prompt_embeds(...)[:, i]`` (``i`` from ``tokenizer_3``); module
  ``j`` uses embedding ``j``. The official loop also runs the last module a second time with the same embeddings
  (``original_modules + original_modules[-1:]``), which rewrites it with the same value; kept here.

Both then compute, per module, ``W' = (λW + s_e Σ v* cᵀ + s_p Σ v_p cᵀ)(λI + s_e Σ c cᵀ + s_p Σ c cᵀ)⁻¹`` with the
values ``v = module(c)`` of the *original* module (bias included, where the module has one).
"""

from __future__ import annotations

import torch


def solve_module(module: torch.nn.Linear, erase, guide, preserve, *, lamb, erase_scale, preserve_scale) -> torch.Tensor:
    """The official per-module closed form; ``erase`` / ``guide`` / ``preserve``: ``(1, d)`` rows per text."""
    w_old = module.weight.detach().double()
    mat1 = lamb * w_old
    mat2 = lamb * torch.eye(w_old.shape[1], dtype=torch.float64)
    with torch.no_grad():
        for c, g in zip(erase, guide, strict=True):
            c_i, v_i_star = c.T, module(g.to(module.weight.dtype)).double().T
            mat1 += erase_scale * (v_i_star @ c_i.T)
            mat2 += erase_scale * (c_i @ c_i.T)
        for c in preserve:
            c_i, v_i_star = c.T, module(c.to(module.weight.dtype)).double().T
            mat1 += preserve_scale * (v_i_star @ c_i.T)
            mat2 += preserve_scale * (c_i @ c_i.T)
    return mat1 @ torch.inverse(mat2)


def uce_flux(pipe, edit_concepts, guide_concepts, preserve_concepts, *, lamb=0.5, erase_scale=1.0,
             preserve_scale=1.0, max_sequence_length=512) -> dict[str, torch.Tensor]:
    """``uce_flux_edit.py``'s ``UCE``: the edited weights by state-dict key (float64)."""
    embeds = {}
    for e in dict.fromkeys([*edit_concepts, *guide_concepts, *preserve_concepts]):
        with torch.no_grad():
            t_emb = pipe.encode_prompt(prompt=e, prompt_2=None, max_sequence_length=max_sequence_length)
        last = pipe.tokenizer_2(e, padding="max_length", max_length=max_sequence_length, truncation=True,
                                return_tensors="pt")["attention_mask"].sum() - 2
        embeds[e] = [t_emb[0][:, last, :].double(), t_emb[1].double()]
    out = {}
    for name, module in pipe.transformer.named_modules():
        if "context_embedder" in name or "text_embedder.linear_1" in name:
            idx = 1 if "text_embedder.linear_1" in name else 0
            out[f"{name}.weight"] = solve_module(
                module, [embeds[c][idx] for c in edit_concepts], [embeds[g][idx] for g in guide_concepts],
                [embeds[p][idx] for p in preserve_concepts], lamb=lamb, erase_scale=erase_scale,
                preserve_scale=preserve_scale)
    return out


def uce_hidream(pipe, edit_concepts, guide_concepts, preserve_concepts, *, lamb=0.5, erase_scale=1.0,
                preserve_scale=1.0, max_sequence_length=128) -> dict[str, torch.Tensor]:
    """``uce_hidream_edit.py``'s ``UCE``: the edited weights by state-dict key (float64)."""
    names, modules = [], []
    for name, module in pipe.transformer.named_modules():
        if "caption_projection" in name and "linear" in name:
            names.append(name)
            modules.append(module)
    llama_layers = pipe.transformer.config.llama_layers
    embeds: dict[str, list[torch.Tensor]] = {}
    for e in dict.fromkeys([*edit_concepts, *guide_concepts, *preserve_concepts]):
        with torch.no_grad():
            llama = pipe._get_llama3_prompt_embeds(e, max_sequence_length, "cpu", torch.float64)
            t5 = pipe._get_t5_prompt_embeds(e, max_sequence_length, "cpu", torch.float64)
        i = pipe.tokenizer_4(e, padding="max_length", max_length=min(max_sequence_length,
                             pipe.tokenizer_4.model_max_length), truncation=True, add_special_tokens=True,
                             return_tensors="pt")["attention_mask"].sum() - 2
        llama = llama[:, :, i, :]
        embeds[e] = [llama[k].double() for k in llama_layers]
        j = pipe.tokenizer_3(e, padding="max_length", max_length=min(max_sequence_length,
                             pipe.tokenizer_3.model_max_length), truncation=True, add_special_tokens=True,
                             return_tensors="pt")["attention_mask"].sum() - 2
        embeds[e] += [t5[:, j, :].double()]
    out: dict[str, torch.Tensor] = {}
    for module_idx, module in enumerate([*modules, *modules[-1:]]):
        if module_idx == len(modules):
            module_idx -= 1
        out[f"{names[module_idx]}.weight"] = solve_module(
            module, [embeds[c][module_idx] for c in edit_concepts], [embeds[g][module_idx] for g in guide_concepts],
            [embeds[p][module_idx] for p in preserve_concepts], lamb=lamb, erase_scale=erase_scale,
            preserve_scale=preserve_scale)
    return out
