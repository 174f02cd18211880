"""An independent re-statement of the official RECE/UCE procedures, layer by layer, as the oracle of the tests.

It follows the published algorithm step by step (github.com/CharlesGong12/RECE, ``erase_methods`` and
``utils/embedding_calculation``): per projection, accumulate ``λW + s Σ v cᵀ`` and ``λI + s Σ c cᵀ`` over
token-aligned concept/anchor pairs and preserved texts, then multiply by the explicit inverse; RECE derives
``c' = (γI + Σ W'ᵀW')⁻¹ (Σ W'ᵀ W₀) c`` from the edited and original layers. Everything runs in float64 on
plain tensors, with none of the package's code.
"""

from __future__ import annotations

import torch


def projections(unet) -> list[torch.nn.Linear]:
    """Values first, then keys, as the official code orders them."""
    layers = [m for n, m in unet.named_modules() if n.endswith("attn2")]
    return [layer.to_v for layer in layers] + [layer.to_k for layer in layers]


def encode(pipe, text: str) -> tuple[torch.Tensor, int]:
    tokens = pipe.tokenizer(text, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt")
    with torch.no_grad():
        emb = pipe.text_encoder(tokens.input_ids)[0][0].double()
    return emb, int(tokens.attention_mask[0].sum())


def _values(w: torch.Tensor, old: torch.Tensor, new: torch.Tensor, technique: str) -> torch.Tensor:
    if technique == "tensor":
        o = old @ w.T
        u = o / o.norm()
        n = new @ w.T
        return n - (u * n).sum() * u
    return new @ w.T


def uce_edit(weights: list[torch.Tensor], pairs, retain, *, lamb, erase_scale, preserve_scale, technique,
             edit: list[bool]) -> list[torch.Tensor]:
    """One UCE edit of every projection (``pairs``: (concept rows, anchor rows); ``retain``: full embeddings)."""
    out = []
    for w, do in zip(weights, edit, strict=False):
        if not do:
            out.append(w)
            continue
        d = w.shape[1]
        mat1 = lamb * w.clone()
        mat2 = lamb * torch.eye(d, dtype=torch.float64)
        for old, new in pairs:
            v = _values(w, old, new, technique)
            for i in range(old.shape[0]):
                mat1 += erase_scale * torch.outer(v[i], old[i])
                mat2 += erase_scale * torch.outer(old[i], old[i])
        for emb in retain:
            v = emb @ w.T
            for i in range(emb.shape[0]):
                mat1 += preserve_scale * torch.outer(v[i], emb[i])
                mat2 += preserve_scale * torch.outer(emb[i], emb[i])
        out.append(mat1 @ torch.inverse(mat2))
    return out


def aligned(pipe, concept: str, anchor: str) -> tuple[torch.Tensor, torch.Tensor]:
    old, n_old = encode(pipe, concept)
    new, n_new = encode(pipe, anchor)
    i, j = n_old - 2, n_new - 2
    far = max(i, j)
    return old[i:len(old) - max(0, far - i)], new[j:len(new) - max(0, far - j)]


def regzero(edited: list[torch.Tensor], original: list[torch.Tensor], concept: torch.Tensor, gamma: float):
    d = concept.shape[1]
    mat1 = gamma * torch.eye(d, dtype=torch.float64)
    mat2 = torch.zeros(d, d, dtype=torch.float64)
    for w1, w0 in zip(edited, original, strict=False):
        mat1 += w1.T @ w1
        mat2 += w1.T @ w0
    return concept @ (torch.inverse(mat1) @ mat2).T


def recipe(pipe, concepts, anchor=" ", *, uce_lamb=0.5, uce_erase=1.0, uce_preserve=1.0, uce_retain=("",),
           iterations=3, gamma=0.1, lamb=0.1, erase_scale=1.0, preserve_scale=0.1, technique="replace",
           with_to_k=True) -> list[list[torch.Tensor]]:
    """Official nudity-style recipe: UCE init, then ``iterations`` RECE epochs. Returns weights after each stage
    (values then keys, float64)."""
    original = [p.weight.detach().double().clone() for p in projections(pipe.unet)]
    n = len(original) // 2
    edit = [True] * n + [with_to_k] * n
    anchor_uce = " " if anchor == "" else anchor
    pairs = [aligned(pipe, c, anchor_uce) for c in concepts]
    retain = [encode(pipe, t)[0] for t in uce_retain]
    weights = uce_edit(original, pairs, retain, lamb=uce_lamb, erase_scale=uce_erase,
                       preserve_scale=uce_preserve, technique=technique, edit=edit)
    stages = [weights]
    anchor_emb = encode(pipe, anchor)[0]
    for _ in range(iterations):
        adv = [regzero(weights, original, encode(pipe, c)[0], gamma) for c in concepts]
        retain = [anchor_emb for _ in concepts]
        weights = uce_edit(weights, [(a, anchor_emb) for a in adv], retain, lamb=lamb, erase_scale=erase_scale,
                           preserve_scale=preserve_scale, technique=technique, edit=edit)
        stages.append(weights)
    return stages
