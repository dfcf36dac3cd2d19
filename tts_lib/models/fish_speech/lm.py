"""The dual autoregressive text-to-semantic model of Fish Speech (OpenAudio S1-mini, fish-speech-1.5).

The slow transformer reads one position per text token or codec frame and predicts the next token;
at a frame, that token is the frame's first code as a `<|semantic:N|>` id. The fast transformer then
reads the slow transformer's last hidden state (before its final norm) followed by the frame's codes
0..n-2 and predicts codes 0..n-1; at inference only its predictions for codes 1..n-1 are used.

Parameter names and shapes are upstream's `DualARTransformer` state dict, so `model.pth` files load
both ways. Training and inference share one embedding rule (`embed`): upstream's inference rule.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tts_lib.models import ModuleRoles
from tts_lib.models.fish_speech.checkpoint import (
    MODEL_FILE,
    check_checkpoint_folder,
    check_state_dict,
    check_tokenizer,
    load_state_dict_file,
    save_state_dict_file,
)
from tts_lib.models.fish_speech.config import CONFIG_FILE, FishSpeechConfig
from tts_lib.models.fish_speech.layers import Block, BlockShape, KVCache, RMSNorm, rope_table
from tts_lib.models.fish_speech.tokenizer import TOKENIZER_FILES, FishTokenizer

# The fast transformer's batch is every frame of the batch. CUDA's fused attention kernels fail for a
# batch of 2**16 or more (pytorch/pytorch#146704), so more frames than this run in chunks.
FAST_CHUNK = 32768


@dataclass
class Caches:
    """KV caches for generation: the slow layers over the sequence, the fast layers over one frame."""

    slow: list[KVCache]
    fast: list[KVCache]


def slow_shape(c: FishSpeechConfig) -> BlockShape:
    return BlockShape(
        dim=c.dim,
        n_head=c.n_head,
        n_local_heads=c.n_local_heads,
        head_dim=c.head_dim,
        intermediate_size=c.intermediate_size,
        qkv_bias=c.attention_qkv_bias,
        o_bias=c.attention_o_bias,
        qk_norm=c.attention_qk_norm,
        norm_eps=c.norm_eps,
        dropout=c.dropout,
    )


def fast_shape(c: FishSpeechConfig) -> BlockShape:
    return BlockShape(
        dim=c.fast_dim,
        n_head=c.fast_n_head,
        n_local_heads=c.fast_n_local_heads,
        head_dim=c.fast_head_dim,
        intermediate_size=c.fast_intermediate_size,
        qkv_bias=c.fast_attention_qkv_bias,
        o_bias=c.fast_attention_o_bias,
        qk_norm=c.fast_attention_qk_norm,
        norm_eps=c.norm_eps,
        dropout=c.dropout,
    )


LAYER_LINEARS = ["wqkv", "wo", "w1", "w2", "w3"]  # attention and SwiGLU MLP, slow and fast layers
# Upstream's r_8_alpha_16 targets: the layers plus token/codebook embeddings and both output heads, so adapters
# imported from upstream's LoRA checkpoints fit this preset exactly.
UPSTREAM_TARGETS = [*LAYER_LINEARS, "embeddings", "codebook_embeddings", "fast_embeddings", "output", "fast_output"]
FISH_ROLES = ModuleRoles(
    adapter_presets={
        "attention_mlp": LAYER_LINEARS,
        "upstream": UPSTREAM_TARGETS,
        # peft reads a string as one regex that must match a module's full name
        "fast_only": r"fast_layers\.\d+\.(attention\.(wqkv|wo)|feed_forward\.(w1|w2|w3))",
    },
    text_embeddings="embeddings",  # the text token table; codebook_embeddings and fast_embeddings are the codes'
    embeddings=frozenset({"embeddings", "codebook_embeddings", "fast_embeddings"}),
    heads=frozenset({"output", "fast_output"}),
    # "(^|.)" so that fast_layers.{i} does not match: fast layers sit above the slow stack and count as the top
    layer_pattern=r"(?:^|\.)layers\.(\d+)\.",
)


class FishSpeechLM(nn.Module):
    module_roles = FISH_ROLES  # for adapters and optimiser groups (tts_lib.models.ModuleRoles)

    def __init__(
        self,
        config: FishSpeechConfig,
        semantic_begin_id: int,
        semantic_end_id: int | None = None,
        tokenizer: FishTokenizer | None = None,
    ) -> None:
        """`semantic_begin_id`: the token id of `<|semantic:0|>` (the tokenizer's `semantic_ids[0]`);
        `semantic_end_id` defaults to the last of codebook_size contiguous semantic ids. `tokenizer`: the one
        the model was trained with; save_pretrained writes it beside the weights, as upstream's does."""
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer  # a plain attribute: not a module, not in the state dict
        self.semantic_begin_id = semantic_begin_id
        if semantic_end_id is None:
            semantic_end_id = semantic_begin_id + config.codebook_size - 1
        self.semantic_end_id = semantic_end_id
        if not 0 <= self.semantic_begin_id <= self.semantic_end_id < config.vocab_size:
            raise ValueError(
                f"semantic ids {self.semantic_begin_id}..{self.semantic_end_id} must lie inside the "
                f"vocabulary (vocab_size {config.vocab_size})"
            )
        self.gradient_checkpointing = False

        c = config
        self.embeddings = nn.Embedding(c.vocab_size, c.dim)
        # One table for all codebooks: codebook i's code j is row i * codebook_size + j.
        self.codebook_embeddings = nn.Embedding(c.codebook_size * c.num_codebooks, c.dim)
        self.layers = nn.ModuleList(Block(slow_shape(c)) for _ in range(c.n_layer))
        self.norm = RMSNorm(c.dim, c.norm_eps)
        if not c.tie_word_embeddings:
            self.output = nn.Linear(c.dim, c.vocab_size, bias=False)

        self.fast_project_in = nn.Linear(c.dim, c.fast_dim) if c.fast_dim != c.dim else nn.Identity()
        self.fast_embeddings = nn.Embedding(c.codebook_size, c.fast_dim)
        self.fast_layers = nn.ModuleList(Block(fast_shape(c)) for _ in range(c.n_fast_layer))
        self.fast_norm = RMSNorm(c.fast_dim, c.norm_eps)
        self.fast_output = nn.Linear(c.fast_dim, c.codebook_size, bias=False)

        self.build_rope_tables()
        if not self.embeddings.weight.is_meta:  # on meta (before loading weights) there is nothing to init
            self.init_weights()

    def build_rope_tables(self, device: torch.device | str | None = None) -> None:
        """(Re)make the rotary tables; they are derived data, never saved in the state dict."""
        c = self.config
        self.register_buffer("rope", rope_table(c.max_seq_len, c.head_dim, c.rope_base, device), persistent=False)
        fast = rope_table(c.num_codebooks, c.fast_head_dim, c.rope_base, device)
        self.register_buffer("fast_rope", fast, persistent=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Random init as upstream: normal(0, initializer_range) for linears and embeddings, zero biases."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                m.weight.normal_(0.0, std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.zero_()

    # ---- slow transformer -------------------------------------------------------------------

    def embed(self, tokens: Tensor) -> Tensor:
        """tokens (B, 1 + num_codebooks, T) -> (B, T, dim).

        Upstream's inference rule (`forward_generate`): token embedding, plus the sum of the frame's
        codebook embeddings where row 0 is a semantic token, and with scale_codebook_embeddings that
        sum is divided by sqrt(num_codebooks + 1) there. Codebook rows are ignored elsewhere."""
        c = self.config
        ids = tokens[:, 0].long()  # (B, T)
        is_semantic = (ids >= self.semantic_begin_id) & (ids <= self.semantic_end_id)  # (B, T)
        codes = torch.where(is_semantic[:, None], tokens[:, 1:].long(), 0)  # (B, nc, T)
        frame = self.codebook_embeddings(codes[:, 0])
        for i in range(1, c.num_codebooks):  # a running sum: no (B, nc, T, dim) temporary
            frame = frame + self.codebook_embeddings(codes[:, i] + i * c.codebook_size)
        x = self.embeddings(ids) + torch.where(is_semantic[..., None], frame, 0)  # (B, T, dim)
        if c.scale_codebook_embeddings:
            x = torch.where(is_semantic[..., None], x / math.sqrt(c.num_codebooks + 1), x)
        return x

    def _slow_head(self, hidden: Tensor) -> Tensor:
        x = self.norm(hidden)
        return F.linear(x, self.embeddings.weight) if self.config.tie_word_embeddings else self.output(x)

    def forward(self, tokens: Tensor, head: bool = True) -> tuple[Tensor | None, Tensor]:
        """tokens (B, 1 + num_codebooks, T) -> (logits (B, T, vocab), hidden (B, T, dim)).

        `hidden` is the last slow layer's output before the final norm: what the fast transformer
        reads (after `fast_project_in`). Logits stay in the compute dtype; upcast for the loss.
        `head=False` returns None for the logits: the loss applies `_slow_head` in chunks itself, so
        the whole (B, T, vocab) tensor never exists. Right-padded batches need no padding mask: causal
        attention keeps every real position from seeing the padding after it, and padded positions'
        outputs are simply not scored."""
        x = self.embed(tokens)
        rope = self.rope[: tokens.shape[-1]]
        for layer in self.layers:
            x = self._run(layer, x, rope)
        return (self._slow_head(x) if head else None), x

    def slow_logits(self, tokens: Tensor) -> Tensor:
        """(B, 1 + num_codebooks, T) -> float32 (B, T, vocab)."""
        return self.forward(tokens)[0].float()

    def _run(self, layer: Block, x: Tensor, rope: Tensor) -> Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, x, rope, use_reentrant=False)
        return layer(x, rope)

    # ---- fast transformer -------------------------------------------------------------------

    def fast_logits(self, hidden: Tensor, codes: Tensor, head: bool = True) -> Tensor:
        """Teacher-forced fast transformer for N frames -> (N, num_codebooks, codebook_size).

        hidden (N, dim): the slow `hidden` at the position whose next token is the frame (the position
        just before the frame's semantic token); codes (N, num_codebooks): the frame's codes. Input
        position 0 is the projected hidden state, position k the embedding of codes[:, k - 1]; output
        k predicts codes[:, k]. `head=False` returns the last layer's output (N, num_codebooks, fast_dim)
        instead, for a loss that applies `_fast_head` in chunks."""
        if hidden.shape[0] > FAST_CHUNK:
            parts = zip(hidden.split(FAST_CHUNK), codes.split(FAST_CHUNK))
            return torch.cat([self.fast_logits(h, c, head) for h, c in parts])
        first = self.fast_project_in(hidden)[:, None]  # (N, 1, fast_dim)
        previous = self.fast_embeddings(codes[:, :-1].long())  # (N, nc - 1, fast_dim)
        x = torch.cat([first, previous.to(first.dtype)], dim=1)  # (N, nc, fast_dim)
        for layer in self.fast_layers:
            x = self._run(layer, x, self.fast_rope)
        return self._fast_head(x) if head else x

    def _fast_head(self, x: Tensor) -> Tensor:
        return self.fast_output(self.fast_norm(x))

    # ---- incremental decoding (generation) --------------------------------------------------

    def new_caches(self, max_len: int, batch: int = 1, dtype: torch.dtype | None = None) -> Caches:
        c = self.config
        ref = self.embeddings.weight

        def kv(n_kv: int, length: int, head_dim: int) -> KVCache:
            return KVCache(batch, n_kv, length, head_dim, dtype or ref.dtype, ref.device)

        slow = [kv(c.n_local_heads, max_len, c.head_dim) for _ in self.layers]
        fast = [kv(c.fast_n_local_heads, c.num_codebooks, c.fast_head_dim) for _ in self.fast_layers]
        return Caches(slow, fast)

    def step_slow(self, tokens: Tensor, caches: Caches, pos: int) -> tuple[Tensor, Tensor]:
        """Run positions pos..pos+T-1 of tokens (B, 1 + nc, T) through the cached slow transformer.
        Returns float32 logits (B, vocab) and hidden (B, dim) of the last position."""
        x = self.embed(tokens)
        rope = self.rope[pos : pos + tokens.shape[-1]]
        for layer, cache in zip(self.layers, caches.slow):
            x = layer(x, rope, cache, pos)
        last = x[:, -1:]  # (B, 1, dim)
        return self._slow_head(last)[:, 0].float(), last[:, 0]

    def step_fast(self, x: Tensor, caches: Caches, pos: int) -> Tensor:
        """One fast position: x (B, fast_dim) at codebook position pos -> float32 logits (B, codebook_size).
        Position 0 takes `fast_project_in(hidden)`, position k the embedding of code k - 1."""
        x = x[:, None]  # (B, 1, fast_dim)
        rope = self.fast_rope[pos : pos + 1]
        for layer, cache in zip(self.fast_layers, caches.fast):
            x = layer(x, rope, cache, pos)
        return self.fast_output(self.fast_norm(x))[:, 0].float()

    # ---- checkpoint folders -----------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        semantic_begin_id: int | None = None,
    ) -> FishSpeechLM:
        """Load `config.json` + `model.pth` from a checkpoint folder.

        The weights are memory-mapped and become the parameters directly (the module is built on the
        meta device), so loading on CPU costs about one checkpoint of memory. `dtype` None keeps the
        file's dtype. `semantic_begin_id` None reads the folder's tokenizer to find `<|semantic:0|>`
        and checks it against the config."""
        folder = Path(path)
        check_checkpoint_folder(folder)
        config = FishSpeechConfig.from_file(folder / CONFIG_FILE)
        tokenizer = None
        if semantic_begin_id is None or all((folder / name).is_file() for name in TOKENIZER_FILES):
            tokenizer = FishTokenizer.from_dir(folder)
            check_tokenizer(config, tokenizer)
            semantic_begin_id = tokenizer.semantic_ids[0] if semantic_begin_id is None else semantic_begin_id
        with torch.device("meta"):
            model = cls(config, semantic_begin_id, tokenizer=tokenizer)
        state = load_state_dict_file(folder / MODEL_FILE)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        check_state_dict(state, expected, config, str(folder / MODEL_FILE))
        state = {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        model.build_rope_tables(device)
        return model

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write the folder upstream's `save_pretrained` writes and its `from_pretrained` loads: `config.json`,
        `model.pth` (a plain state dict) and the tokenizer files, each atomically. A model without its tokenizer
        is refused: the folder would load neither upstream nor here."""
        if self.tokenizer is None:
            raise ValueError(
                f"cannot save {path}: this model has no tokenizer, and a checkpoint folder needs "
                f"{' and '.join(TOKENIZER_FILES)}; load it with FishSpeechLM.from_pretrained, or build it with "
                "tokenizer=FishTokenizer.from_dir(...)"
            )
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder / CONFIG_FILE)
        save_state_dict_file(self.state_dict(), folder / MODEL_FILE)
        self.tokenizer.save_pretrained(folder)
        return folder
