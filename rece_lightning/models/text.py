"""Tokenise and encode concepts the way Stable Diffusion (and the official UCE/RECE code) does.

Texts are padded to ``tokenizer.model_max_length`` and encoded as ``text_encoder(ids)[0]`` without an attention
mask, exactly as ``StableDiffusionPipeline.encode_prompt`` does for SD 1.x / 2.x. SD 1.x pads with
``<|endoftext|>``, SD 2.x with ``!``; the attention mask of the tokenizer tells padding apart in both cases.

Token alignment of a concept and its anchor (official UCE ``edit_model``): with ``i`` and ``j`` the number of
non-padding tokens (start/end included) minus 2 and ``f = max(i, j)``, the concept contributes rows
``i … L − max(0, f − i)`` and the anchor rows ``j … L − max(0, f − j)`` (``L`` = padded length). ``i`` is the index
of the last word token for CLIP (start token first) and for T5 (no start token) alike; a T5 text without a word token
(``""``, ``" "``: just ``</s>``) gets ``i = 0``.

Other model families subclass :class:`TextEncoder` and override :meth:`TextEncoder.encode_batch` (SDXL: two CLIP
encoders, Flux: T5 + pooled CLIP, SD3: two CLIP + T5 in one sequence; see :mod:`rece_lightning.models.families`).

**Input spaces.** A family whose denoiser reads a text through more than one embedding (Flux and SD3: the tokens and
the pooled embedding; HiDream: T5 and Llama layers) puts the others in :attr:`EncodedText.spaces`, one
:class:`EncodedText` per space (a pooled embedding is one row, :meth:`EncodedText.single_row`);
:meth:`TextEncoder.space` reads one space with the same ``full`` / ``last`` / ``aligned`` as the tokens.

**Token level** (what the token attacks need, :mod:`rece_lightning.attacks`): :meth:`TextEncoder.vocabulary` (the
prompt tokenizer's ids an attack may use), :meth:`TextEncoder.decode`, :meth:`TextEncoder.encode_token_ids` (the
embeddings of prompts made of given token ids: discrete Ring-A-Bell) and :meth:`TextEncoder.encode_with_prefix`
(differentiable embeddings of prompts whose first K token slots hold given, possibly soft, tokens: UnlearnDiffAtk).
The base class does it for one encoder whose first output is what the denoiser reads (SD 1.x / 2.x, the testbed, and
Flux's T5); families with more encoders override them (SDXL).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rece_lightning.errors import RECEError
from rece_lightning.maths.projections import MAIN_SPACE


@dataclass(frozen=True)
class EncodedText:
    """Token embeddings of one text.

    Attributes:
        text: the text as given.
        embedding: (L, d) float64 token embeddings, padded to the tokenizer's length.
        length: non-padding tokens, start and end tokens included.
        pooled: the pooled text embedding some families also read (SDXL, Flux), else ``None``.
        spaces: the text's embeddings in the family's other input spaces (see the module docstring), by space name.
    """

    text: str
    embedding: Tensor
    length: int
    pooled: Tensor | None = None
    spaces: Mapping[str, EncodedText] = field(default_factory=dict)

    @classmethod
    def single_row(cls, text: str, row: Tensor) -> EncodedText:
        """A one-row embedding (a pooled embedding, ``(d,)`` or ``(1, d)``): its only row is its last token and the
        row every alignment pairs (``length`` 2, the start token and the row, in the official ``length − 2``)."""
        return cls(text=text, embedding=row.reshape(1, -1), length=2)

    def in_space(self, space: str) -> EncodedText:
        """The text's embedding in input space ``space`` (itself for :data:`MAIN_SPACE`)."""
        if space == MAIN_SPACE:
            return self
        if space not in self.spaces:
            raise RECEError(f"the text encoder gives no embedding in the input space {space!r} "
                            f"(it has {[MAIN_SPACE, *self.spaces]})")
        return self.spaces[space]

    @property
    def last_token(self) -> Tensor:
        """The row of the last word token, ``length − 2`` as the official UCE scripts index it (``(1, d)``).

        For a T5 text with no word token this is ``−1``, i.e. the last padding row, exactly as the official
        ``uce_flux_edit.py`` does (``attention_mask.sum() − 2`` used as an index).
        """
        row = self.length - 2
        return self.embedding[row : row + 1] if row != -1 else self.embedding[-1:]


class TextEncoder:
    """Encodes texts with a pipeline's tokenizer and text encoder, caching each distinct text once."""

    no_token_attacks: str | None = None
    """Why this encoder cannot serve the token attacks (Ring-A-Bell's discrete search, UnlearnDiffAtk), or ``None``:
    they run. A family whose prompt encoding the token-level methods below cannot reproduce sets it, and every
    token-level method (and the family's :meth:`~rece_lightning.models.family.ModelFamily.prefix_conditioning` and
    ``denoising_loss``) refuses with it."""

    def __init__(self, tokenizer, text_encoder: nn.Module, max_length: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self._max_length = max_length
        self._cache: dict[str, EncodedText] = {}
        self._vocabulary: list[int] | None = None

    @property
    def max_length(self) -> int:
        """The padded length of every encoded text (the tokenizer's ``model_max_length`` unless given)."""
        return int(self.tokenizer.model_max_length if self._max_length is None else self._max_length)

    def check_token_attacks(self) -> None:
        """Raise :class:`RECEError` with :attr:`no_token_attacks` when this encoder cannot serve the token attacks."""
        if self.no_token_attacks is not None:
            raise RECEError(self.no_token_attacks)

    def check(self, text: str, role: str) -> None:
        """Raise when ``text`` would be truncated by the tokenizer."""
        n = len(self.tokenizer(text, truncation=False, verbose=False).input_ids)
        if n > self.max_length:
            shown = text if len(text) <= 60 else f"{text[:57]}..."
            raise RECEError(
                f"{role} {shown!r} is {n} tokens long, more than the tokenizer's {self.max_length}; shorten it"
            )

    def check_known(self, text: str, role: str) -> None:
        """Raise when every token of ``text`` is the tokenizer's unknown token (e.g. an emoji for a WordPiece
        vocabulary): erasing it would erase ``[UNK]``, i.e. every unknown word, not ``text``."""
        unknown = getattr(self.tokenizer, "unk_token_id", None)
        if unknown is None:
            return
        special = set(getattr(self.tokenizer, "all_special_ids", []))
        ids = [i for i in self.tokenizer(text, truncation=False, verbose=False).input_ids
               if i == unknown or i not in special]
        if ids and all(i == unknown for i in ids):
            token = getattr(self.tokenizer, "unk_token", "unknown")
            raise RECEError(f"{role} {text!r} is only unknown tokens ({token}) to this model's tokenizer; erasing it "
                            "would erase every unknown word: write the concept in words the tokenizer knows")

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        """Encode ``texts`` in one batch (texts seen before come from the cache)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            for encoded in self.encode_batch(todo):
                if not all(torch.isfinite(e.embedding).all() for e in (encoded, *encoded.spaces.values())):
                    raise RECEError("the text encoder produced non-finite embeddings; check its weights and dtype")
                self._cache[encoded.text] = encoded
        return [self._cache[t] for t in texts]

    def encode_batch(self, todo: list[str]) -> list[EncodedText]:
        """Encode distinct texts in one batch, as ``StableDiffusionPipeline.encode_prompt`` (SD 1.x / 2.x)."""
        tokens = self.tokenizer(
            todo, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        # texts with the same tokens (" " and "" for CLIP) are encoded once
        unique, inverse = torch.unique(tokens.input_ids, dim=0, return_inverse=True)
        device = next(self.text_encoder.parameters()).device
        hidden = self.text_encoder(unique.to(device))[0]
        hidden = hidden.detach().to("cpu", torch.float64)
        return [EncodedText(text=text, embedding=hidden[row], length=int(mask.sum()))
                for text, row, mask in zip(todo, inverse.tolist(), tokens.attention_mask, strict=True)]

    def space(self, name: str) -> TextEncoder:
        """The texts' embeddings in input space ``name`` (this encoder for :data:`MAIN_SPACE`), read with the same
        :meth:`full`, :meth:`last` and :meth:`aligned`."""
        return self if name == MAIN_SPACE else SpaceText(self, name)

    def full(self, text: str) -> Tensor:
        """All ``L`` token rows of ``text`` (float64)."""
        return self.encode([text])[0].embedding

    def last(self, text: str) -> Tensor:
        """The last word token's row of ``text`` (``(1, d)``), as the official UCE scripts use (``tokens: last``)."""
        return self.encode([text])[0].last_token

    def aligned(self, concept: str, anchor: str) -> tuple[Tensor, Tensor]:
        """Concept and anchor rows paired with the official UCE token alignment (see module docstring)."""
        enc_c, enc_a = self.encode([concept, anchor])
        return align_tokens(enc_c, enc_a)

    # ------------------------------------------------------------------------- token level (the token attacks)
    def vocabulary(self) -> list[int]:
        """Token ids an attack may put into a prompt: every id of the prompt tokenizer but the special ones."""
        self.check_token_attacks()
        if self._vocabulary is None:
            self._vocabulary = search_vocabulary(self.tokenizer)
        return self._vocabulary

    @property
    def vocab_size(self) -> int:
        """Rows of the token-embedding table(s), the width of the one-hots :meth:`encode_with_prefix` takes."""
        return int(self.text_encoder.get_input_embeddings().weight.shape[0])

    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ids (of :meth:`vocabulary`)."""
        return self.tokenizer.decode(list(ids))

    @torch.no_grad()
    def encode_token_ids(self, candidates: Tensor) -> Tensor:
        """``(B, L, d)`` float64 embeddings (on the encoder's device) of ``B`` prompts made of the ``(B, K)`` token
        ids ``candidates``, built as the tokenizer builds a prompt: start token (if it has one), the ids, end token,
        padding to :attr:`max_length`; then encoded as :meth:`encode_batch` does."""
        self.check_token_attacks()
        ids = token_sequence(self.tokenizer, candidates, self.max_length)
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(ids.to(device))[0].double()

    def encode_with_prefix(self, prompts: Sequence[str], prefix: Tensor) -> tuple[Tensor, Tensor | None]:
        """Embeddings of ``prefix + prompt`` for each prompt, differentiable with respect to ``prefix``.

        Each prompt is tokenised as usual; its ``K`` token slots right after the start token (if any) are filled with
        the prefix (the prompt's tail is cut to keep :attr:`max_length`). ``prefix`` is ``(B, K)`` token ids, or
        ``(B, K, V)`` weights over the :attr:`vocab_size` tokens (one-hots, relaxed one-hots) that multiply the
        encoder's token-embedding table. Returns the ``(B, L, d)`` embeddings the denoiser reads (in the encoder's
        dtype, on ``prefix``'s device) and the pooled embedding where the family has one (else ``None``).
        """
        self.check_token_attacks()
        ids = torch.stack([prefixed_ids(self.tokenizer, p, prefix.shape[1], self.max_length, self.vocabulary()[0])
                           for p in prompts])
        return run_with_prefix(self.text_encoder, ids, start_slot(self.tokenizer), prefix)[0], None


def start_token(tokenizer) -> int | None:
    """The start token the tokenizer puts first in every prompt (CLIP's ``<|startoftext|>``, BERT's ``[CLS]``), or
    ``None`` (T5)."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    if start is None or tokenizer("a").input_ids[0] != start:
        return None
    return int(start)


def start_slot(tokenizer) -> int:
    """Index of the first token after the start token: 1 with a start token, 0 without (T5)."""
    return 0 if start_token(tokenizer) is None else 1


def search_vocabulary(tokenizer) -> list[int]:
    """Every token id of ``tokenizer`` except the special ones."""
    special = set(tokenizer.all_special_ids)
    return [i for i in range(len(tokenizer)) if i not in special]


def token_sequence(tokenizer, candidates: Tensor, length: int) -> Tensor:
    """``(B, length)`` ids of prompts made of the ``(B, K)`` token ids: start token (if the tokenizer has one), the
    ids (cut to fit), end token, padding."""
    start = start_token(tokenizer)
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    offset = 0 if start is None else 1
    ids = torch.full((len(candidates), length), tokenizer.pad_token_id, dtype=torch.long)
    k = min(candidates.shape[1], length - 1 - offset)
    if start is not None:
        ids[:, 0] = start
    ids[:, offset : offset + k] = candidates[:, :k]
    ids[:, offset + k] = end
    return ids


def prefixed_ids(tokenizer, prompt: str, k: int, length: int, placeholder: int) -> Tensor:
    """``(length,)`` ids of ``prompt`` with ``k`` placeholder tokens inserted after the start token (if any); the
    tail is cut to keep the length. The placeholders' embeddings are replaced (:func:`run_with_prefix`); they are an
    ordinary token so that an encoder that pools at its end token (CLIP) finds the prompt's."""
    ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids[0]
    s = start_slot(tokenizer)
    return torch.cat([ids[:s], torch.full((k,), placeholder, dtype=ids.dtype), ids[s : length - k]])


def prefix_rows(encoder: nn.Module, prefix: Tensor) -> Tensor:
    """The ``(B, K, d)`` token embeddings of a prefix: rows of ``encoder``'s token-embedding table for ``(B, K)`` ids,
    or ``(B, K, V)`` weights times the table (differentiable in the weights)."""
    table = encoder.get_input_embeddings().weight.detach().float()
    if not prefix.is_floating_point():
        return table[prefix.to(table.device)]
    return prefix @ table.to(prefix.device)


@contextlib.contextmanager
def replaced_tokens(encoder: nn.Module, start: int, rows: Tensor) -> Iterator[None]:
    """Inside the block, ``encoder``'s token embeddings of slots ``start … start + K − 1`` are ``rows`` (B, K, d).

    The hook sits on every embedding module sharing the token table (T5's ``shared`` and ``encoder.embed_tokens``
    are two modules with one weight)."""
    weight = encoder.get_input_embeddings().weight
    modules = [m for m in encoder.modules() if isinstance(m, nn.Embedding) and m.weight is weight]
    k = rows.shape[1]

    def replace(_module, _inputs, output):
        output = output.clone()
        output[:, start : start + k] = rows.to(output.dtype)
        return output

    handles = [m.register_forward_hook(replace) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def run_with_prefix(encoder: nn.Module, ids: Tensor, start: int, prefix: Tensor, **kwargs):
    """``encoder(ids, **kwargs)`` (ids moved to ``prefix``'s device) with the token slots ``start …`` holding the
    prefix (:func:`prefix_rows`)."""
    rows = prefix_rows(encoder, prefix)
    with replaced_tokens(encoder, start, rows):
        return encoder(ids.to(prefix.device), **kwargs)


class SpaceText(TextEncoder):
    """One input space other than the tokens of a :class:`TextEncoder` (:meth:`TextEncoder.space`): texts are
    encoded (and cached) by the encoder, and read in this space."""

    def __init__(self, encoder: TextEncoder, space: str) -> None:
        super().__init__(encoder.tokenizer, encoder.text_encoder)
        self.encoder, self.name = encoder, space

    def check(self, text: str, role: str) -> None:
        """The encoder's check (a text is tokenised once for every space)."""
        self.encoder.check(text, role)

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        """The texts' embeddings in this space, encoded (and cached) by the encoder."""
        return [e.in_space(self.name) for e in self.encoder.encode(texts)]


def align_tokens(concept: EncodedText, anchor: EncodedText) -> tuple[Tensor, Tensor]:
    """Rows ``i … L − max(0, f − i)`` of the concept and ``j … L − max(0, f − j)`` of the anchor."""
    i, j = max(0, concept.length - 2), max(0, anchor.length - 2)
    farthest = max(i, j)
    n = concept.embedding.shape[0]
    rows_c = concept.embedding[i : n - max(0, farthest - i)]
    rows_a = anchor.embedding[j : n - max(0, farthest - j)]
    return rows_c, rows_a
