"""Model families beyond Stable Diffusion 1.x/2.x (registered in :data:`rece_lightning.family.FAMILIES`).

* :mod:`~rece_lightning.families.sdxl` — SDXL: two CLIP encoders, UNet ``attn2.to_k`` / ``attn2.to_v`` (2048-d);
* :mod:`~rece_lightning.families.flux` — Flux: T5 token embeddings read by the transformer's ``context_embedder``
  (4096-d), plus the pooled CLIP embedding.
"""
