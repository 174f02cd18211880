"""HiDream-I1 (``HiDreamImagePipeline``): the transformer reads T5 and Llama-3.1 through ``caption_projection``.

``HiDreamImageTransformer2DModel`` projects the text with ``caption_projection``, a list of bias-free Linears
(``TextProjection.linear``): layer ``i < N`` (``N = num_layers + num_single_layers``, one per block) reads the hidden
state of Llama layer ``llama_layers[i]``, the last one reads T5's last hidden state; nothing else of the transformer
reads those embeddings (the pooled CLIP-L ⊕ CLIP-G embedding goes to ``p_embedder``, which the official script does
not edit and neither do we). So these layers are what UCE edits, as the official ``trainscripts/uce_hidream_edit.py``
of github.com/rohitgandikota/unified-concept-editing does: every ``caption_projection.*.linear`` with the concept's
embedding *in the space that layer reads*.

**Input spaces** (:mod:`rece_lightning.maths.spaces`): T5 is the token space (``tokens``, the last layer), and each distinct
Llama layer ``k`` of ``llama_layers`` is a space ``llama<k>`` read by every block that lists it (HiDream-I1 lists 0 …
31, then 31 sixteen more times: 33 spaces). Layers of one space share one map ``T``, which is exactly the official
per-layer edit (the official values ``module(c*)`` are ``W c*``: the layers have no bias). RECE's derivation runs in
each space from that space's layers.

**Text** as ``HiDreamImagePipeline.encode_prompt`` makes it: T5 padded to ``min(max_sequence_length,
model_max_length)`` tokens *with* its attention mask (``_get_t5_prompt_embeds``); Llama padded the same way with its
mask, ``hidden_states[1:]`` (``_get_llama3_prompt_embeds``). Token counts come from each tokenizer's attention mask,
so ``length − 2`` is the official ``last_token_idx`` of each space: T5's last word token (``</s>`` ends the text), and
for Llama (``<|begin_of_text|>`` first, no end token) the token *before* the last one, as the official script indexes
it. ``max_sequence_length``: 128 by default, as the pipeline's.

**Not available:** the token attacks and UnlearnDiffAtk (a prompt would be one token sequence for T5 and Llama,
whose vocabularies differ), like SD3 (:mod:`rece_lightning.models.families.sd3`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from rece_lightning.errors import RECEError
from rece_lightning.maths.projections import MAIN_SPACE, Projection, linear_layer
from rece_lightning.models.family import ModelFamily
from rece_lightning.models.text import EncodedText, TextEncoder

MAX_SEQUENCE_LENGTH = 128  # HiDreamImagePipeline's default
NO_TOKEN_ATTACKS = ("the token attacks (Ring-A-Bell's discrete search, UnlearnDiffAtk) are not available for "
                    "HiDream: its prompt is read by T5 and Llama, whose vocabularies differ (see "
                    "rece_lightning.models.families.hidream)")


def llama_space(layer: int) -> str:
    """The input space of Llama layer ``layer`` (an index of ``hidden_states[1:]``)."""
    return f"llama{layer}"


class HiDreamTextEncoder(TextEncoder):
    """T5 (the token space) and the hidden states of the Llama layers the transformer reads (one space each).

    Args:
        t5_tokenizer, t5_encoder: ``tokenizer_3`` / ``text_encoder_3``.
        llama_tokenizer, llama_encoder: ``tokenizer_4`` / ``text_encoder_4`` (``LlamaForCausalLM``).
        llama_layers: the distinct Llama layers read (indices of ``hidden_states[1:]``).
        max_sequence_length: tokens per text (capped by each tokenizer's ``model_max_length``).
    """

    no_token_attacks = NO_TOKEN_ATTACKS

    def __init__(self, t5_tokenizer, t5_encoder: nn.Module, llama_tokenizer, llama_encoder: nn.Module,
                 llama_layers: Sequence[int], max_sequence_length: int) -> None:
        super().__init__(t5_tokenizer, t5_encoder,
                         max_length=min(int(max_sequence_length), int(t5_tokenizer.model_max_length)))
        self.llama_tokenizer, self.llama_encoder = llama_tokenizer, llama_encoder
        self.llama_layers = sorted(set(llama_layers))
        self.llama_length = min(int(max_sequence_length), int(llama_tokenizer.model_max_length))

    def check(self, text: str, role: str) -> None:
        """Raise when T5 or Llama would truncate ``text``."""
        super().check(text, role)
        n = len(self.llama_tokenizer(text, truncation=False).input_ids)
        if n > self.llama_length:
            raise RECEError(f"{role} {text!r} is {n} Llama tokens long, more than max_sequence_length "
                            f"{self.llama_length}; shorten it or raise max_sequence_length")

    @staticmethod
    def _run(tokenizer, encoder: nn.Module, todo: list[str], length: int, **kwargs: Any) -> tuple[Any, Any]:
        tokens = tokenizer(todo, padding="max_length", max_length=length, truncation=True, add_special_tokens=True,
                           return_tensors="pt")
        device = next(encoder.parameters()).device
        out = encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device), **kwargs)
        return out, tokens.attention_mask.sum(dim=1).tolist()

    def encode_batch(self, todo: list[str]) -> list[EncodedText]:
        t5, t5_lengths = self._run(self.tokenizer, self.text_encoder, todo, self.max_length)
        t5 = t5[0].detach().to("cpu", torch.float64)
        llama, llama_lengths = self._run(self.llama_tokenizer, self.llama_encoder, todo, self.llama_length,
                                         output_hidden_states=True)
        hidden = llama.hidden_states[1:]
        layers = {k: hidden[k].detach().to("cpu", torch.float64) for k in self.llama_layers}
        return [EncodedText(text=text, embedding=t5[i], length=int(t5_lengths[i]), spaces={
                    llama_space(k): EncodedText(text=text, embedding=h[i], length=int(llama_lengths[i]))
                    for k, h in layers.items()})
                for i, text in enumerate(todo)]

    # ------------------------------------------------------------------ token level: not available for HiDream


class HiDreamFamily(ModelFamily):
    """HiDream-I1 (``HiDreamImagePipeline``): ``caption_projection`` of the transformer reads T5 (the token space)
    and Llama layers (one input space per layer read).

    Options: ``max_sequence_length`` — tokens per text for T5 and Llama (default 128 as ``HiDreamImagePipeline``);
    the same length is passed to the pipeline when it generates.
    """

    name = "hidream"
    pipeline_classes = ("HiDreamImagePipeline",)
    denoiser_name = "transformer"
    default_max_sequence_length: ClassVar[int] = MAX_SEQUENCE_LENGTH

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        """A transformer and a Llama encoder (``text_encoder_4`` / ``tokenizer_4``), which no other family has."""
        return all(getattr(pipeline, part, None) is not None
                   for part in ("transformer", "text_encoder_4", "tokenizer_4"))

    @property
    def max_sequence_length(self) -> int:
        """Tokens per text (the ``max_sequence_length`` option, else the pipeline's default)."""
        return int(self.options.get("max_sequence_length", self.default_max_sequence_length))

    @classmethod
    def find_layers(cls, denoiser: nn.Module) -> list[Projection]:
        """``caption_projection.<i>.linear``: Llama layer ``llama_layers[i]``'s space for ``i < N``, the token space
        (T5) for the last one; in module order."""
        llama_layers = list(getattr(denoiser.config, "llama_layers", None) or [])
        if not llama_layers:
            raise RECEError(f"the {cls.denoiser_name} has no llama_layers in its config; it is not a HiDream "
                            "transformer")
        layers = [linear_layer(denoiser, f"caption_projection.{i}.linear", "to_v", cls.denoiser_name,
                               space=llama_space(k)) for i, k in enumerate(llama_layers)]
        return [*layers, linear_layer(denoiser, f"caption_projection.{len(llama_layers)}.linear", "to_v",
                                      cls.denoiser_name, space=MAIN_SPACE)]

    def make_text_encoder(self) -> TextEncoder:
        """T5 and Llama, after checking the widths ``caption_projection`` reads and the Llama layers it lists."""
        pipe = self.pipeline
        for part in ("text_encoder_3", "tokenizer_3"):
            if getattr(pipe, part, None) is None:
                raise RECEError(f"this HiDream pipeline has no {part} (T5), which the last caption_projection "
                                "reads; load it with the pipeline")
        config = self.denoiser.config
        t5_width, llama_width = (int(w) for w in config.caption_channels)
        llama = pipe.text_encoder_4.config
        if int(pipe.text_encoder_3.config.d_model) != t5_width or int(llama.hidden_size) != llama_width:
            raise RECEError(f"the transformer's caption_projection reads {t5_width}-d T5 and {llama_width}-d Llama "
                            f"text but the encoders give {pipe.text_encoder_3.config.d_model}-d and "
                            f"{llama.hidden_size}-d embeddings; this is not a HiDream pipeline")
        if max(config.llama_layers) >= int(llama.num_hidden_layers):
            raise RECEError(f"the transformer reads Llama layer {max(config.llama_layers)} but the Llama encoder has "
                            f"{llama.num_hidden_layers} layers")
        return HiDreamTextEncoder(pipe.tokenizer_3, pipe.text_encoder_3, pipe.tokenizer_4, pipe.text_encoder_4,
                                  config.llama_layers, self.max_sequence_length)

    def generation_kwargs(self) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length}
