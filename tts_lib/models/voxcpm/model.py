"""VoxCPM2's trainable model (everything but the audio VAE) and its training forward.

    from tts_lib.models.voxcpm import VoxCPM2Model
    model = VoxCPM2Model(config)
    out = model(text_tokens, text_mask, audio_feats, audio_mask, loss_mask, position_ids, labels)
    out["loss/diff"], out["loss/stop"]  # upstream's two losses, equal to upstream's forward under the same seed

A sequence is text tokens, then audio positions, one per patch of `patch_size` latent frames. Text positions embed
their token (times muP's scale_emb), audio positions their patch through the local encoder. The base LM runs over
all of it (audio positions through the scalar quantiser); the residual LM refines its output fused with the patch
embeddings; each position's two states condition the local DiT that predicts the next patch by flow matching, and
the stop head says whether the audio ends there. Parameter names are upstream's, so `model.safetensors` loads as
published (strictly).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tts_lib.common.fileio import atomic_write_json
from tts_lib.models import ModuleRoles
from tts_lib.models.voxcpm.checkpoint import (
    CONFIG_FILE,
    MODEL_FILES,
    VAE_PREFIX,
    check_shapes,
    copy_passthrough,
    find_file,
    load_weights,
    save_weights,
)
from tts_lib.models.voxcpm.config import VoxCPM2Config
from tts_lib.models.voxcpm.flow import flow_loss
from tts_lib.models.voxcpm.local import FlowDecoder, LocalEncoder, ScalarQuantizer
from tts_lib.models.voxcpm.minicpm import KVCache, MiniCPM

AUDIO_START, AUDIO_END, REF_START, REF_END = 101, 102, 103, 104  # special text tokens around audio segments
# Adapter targets (peft regexes over full module names). "upstream": the official recipe's LoRA, q/k/v/o of both LMs
# and of the DiT (not the local encoder); "attention_mlp" adds their MLPs.
_STACKS = r"(base_lm|residual_lm|feat_decoder\.estimator\.decoder)\.layers\.\d+"
UPSTREAM_TARGETS = _STACKS + r"\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"
ATTENTION_MLP = _STACKS + r"\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def shift_right(x: Tensor) -> Tensor:
    """(B, T, ...) -> the same with position t holding x[t - 1] and zeros first: what predicts position t."""
    return torch.cat((torch.zeros_like(x[:, :1]), x[:, :-1]), dim=1)


class VoxCPM2Model(nn.Module):
    module_roles = ModuleRoles(
        adapter_presets={"upstream": UPSTREAM_TARGETS, "attention_mlp": ATTENTION_MLP},
        # upstream's LoRA recipe (conf/voxcpm_v2/voxcpm_finetune_lora.yaml): r 32, alpha 32, no dropout, on
        # q/k/v/o of both LMs and the DiT
        adapter_defaults={"r": 32, "lora_alpha": 32, "lora_dropout": 0.0, "targets": "upstream"},
        text_embeddings="base_lm.embed_tokens",
        embeddings=frozenset({"embed_tokens"}),
        heads=frozenset({"stop_head"}),
        layer_pattern=r"base_lm\.layers\.(\d+)\.",
    )

    def __init__(self, config: VoxCPM2Config):
        super().__init__()
        self.config = config
        lm, enc, dit = config.lm_config, config.encoder_config, config.dit_config
        self.patch_size, self.feat_dim = config.patch_size, config.feat_dim
        self.base_lm = MiniCPM(lm)
        self.residual_lm = MiniCPM(config.residual_lm())
        self.feat_encoder = LocalEncoder(config.local(enc), config.feat_dim)
        self.feat_decoder = FlowDecoder(config.local(dit), config.feat_dim)
        self.fsq_layer = ScalarQuantizer(lm.hidden_size, config.scalar_quantization_latent_dim,
                                         config.scalar_quantization_scale)  # fmt: skip
        self.enc_to_lm_proj = nn.Linear(enc.hidden_dim, lm.hidden_size)
        self.lm_to_dit_proj = nn.Linear(lm.hidden_size, dit.hidden_dim)
        self.res_to_dit_proj = nn.Linear(lm.hidden_size, dit.hidden_dim)
        self.fusion_concat_proj = nn.Linear(2 * lm.hidden_size, lm.hidden_size)
        self.stop_proj = nn.Linear(lm.hidden_size, lm.hidden_size)
        self.stop_head = nn.Linear(lm.hidden_size, 2, bias=False)
        self.source_folder: Path | None = None  # the folder it was loaded from: save_pretrained copies its VAE

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> VoxCPM2Model:
        """The model of a hub-layout folder, every weight checked against config.json (missing, unexpected or
        misshapen: one error naming the file and the keys), in eval mode; dtype None keeps the file's."""
        folder = Path(folder)
        config = VoxCPM2Config.from_file(folder / CONFIG_FILE)
        with torch.device("meta"):
            model = cls(config)
        path = find_file(folder, MODEL_FILES, "the model's weights")
        state = load_weights(path, model.state_dict().keys(), ignore_prefix=VAE_PREFIX)
        check_shapes(path, state, model)
        model.load_state_dict(state, strict=True, assign=True)
        for module in model.modules():
            if isinstance(module, MiniCPM):
                module.build_rope_tables()
        model.source_folder = folder
        return model.to(device=device, dtype=dtype).eval()

    def save_pretrained(self, out: str | os.PathLike) -> Path:
        """A folder upstream's `VoxCPM2Model.from_local` and `from_pretrained` load with every key: config.json,
        model.safetensors, and the audio VAE and tokenizer files of the folder this model came from."""
        if self.source_folder is None:
            raise ValueError(f"cannot save {out}: a VoxCPM2 folder needs the audio VAE and the tokenizer files, and "
                             "this model was not loaded from a folder that has them (use from_pretrained)")  # fmt: skip
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / CONFIG_FILE, self.config.to_dict())
        save_weights(self.state_dict(), out / MODEL_FILES[0])
        copy_passthrough(self.source_folder, out)
        return out

    @property
    def gradient_checkpointing(self) -> bool:
        return self.base_lm.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:
        """Recompute each transformer block in backward, in all four transformers (upstream has none)."""
        for module in self.modules():
            if isinstance(module, MiniCPM):
                module.gradient_checkpointing = on

    @property
    def embedding_scale(self) -> float:
        return self.config.lm_config.scale_emb if self.config.lm_config.use_mup else 1.0

    def position_states(
        self, text_tokens: Tensor, text_mask: Tensor, audio_feats: Tensor, audio_mask: Tensor,
        caches: tuple[KVCache, KVCache] | None = None,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """(lm_out, residual): each position's base-LM (quantised on audio positions) and residual-LM outputs, what
        predicts the position after it. text_tokens (B, T) long, masks (B, T) float, audio_feats (B, T, P, D) ->
        (B, T, H) twice. `caches` (base LM's, residual LM's), for generation: the positions follow the cached ones."""
        base_cache, residual_cache = caches if caches is not None else (None, None)
        feat_embed = self.enc_to_lm_proj(self.feat_encoder(audio_feats))  # (B, T, H)
        text_embed = self.base_lm.embed_tokens(text_tokens) * self.embedding_scale
        text_mask, audio_mask = text_mask.unsqueeze(-1), audio_mask.unsqueeze(-1)
        lm_out = self.base_lm(text_mask * text_embed + audio_mask * feat_embed, causal=True, cache=base_cache)
        lm_out = self.fsq_layer(lm_out) * audio_mask + lm_out * text_mask
        fused = self.fusion_concat_proj(torch.cat((lm_out, audio_mask * feat_embed), dim=-1))
        return lm_out, self.residual_lm(fused, causal=True, cache=residual_cache)

    def dit_condition(self, lm_hidden: Tensor, residual_hidden: Tensor) -> Tensor:
        """(..., H) twice -> (..., 2 * dit hidden): what the DiT draws a patch under."""
        return torch.cat((self.lm_to_dit_proj(lm_hidden), self.res_to_dit_proj(residual_hidden)), dim=-1)

    def hidden_states(
        self, text_tokens: Tensor, text_mask: Tensor, audio_feats: Tensor, audio_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(lm_hidden, residual_hidden, dit_condition): what predicts each position, from the positions before it.
        text_tokens (B, T) long, masks (B, T) float, audio_feats (B, T, P, D) -> (B, T, H), (B, T, H),
        (B, T, 2 * dit hidden)."""
        lm_out, residual = self.position_states(text_tokens, text_mask, audio_feats, audio_mask)
        lm_hidden, residual_hidden = shift_right(lm_out), shift_right(residual)
        return lm_hidden, residual_hidden, self.dit_condition(lm_hidden, residual_hidden)

    def stop_logits(self, lm_hidden: Tensor) -> Tensor:
        """(B, T, H) -> (B, T, 2): logit 1 says the audio ends after this position."""
        return self.stop_head(F.silu(self.stop_proj(lm_hidden)))

    def loss_sums(
        self, text_tokens: Tensor, text_mask: Tensor, audio_feats: Tensor, audio_mask: Tensor, loss_mask: Tensor,
        labels: Tensor, progress: float = 0.0, generator: torch.Generator | None = None,
    ) -> dict[str, tuple[Tensor, int]]:  # fmt: skip
        """{"diff": (summed squared velocity error, supervised latent frames), "stop": (summed stop cross-entropy,
        supervised positions)}: sums, so a trainer can normalise over a whole update. The supervised positions are
        found from loss_mask alone (indices, not a boolean mask): a trace on fake tensors knows every shape."""
        lm_hidden, _, condition = self.hidden_states(text_tokens, text_mask, audio_feats, audio_mask)
        b, t, p, d = audio_feats.shape
        rows = loss_mask.reshape(-1).nonzero().squeeze(1)  # (S,) supervised patches of the (B * T) positions
        # contiguous: randn follows a tensor's strides, and the draws must land where upstream's do
        target = audio_feats.reshape(b * t, p, d).transpose(1, 2).contiguous()  # (N, D, P)
        previous = shift_right(audio_feats).reshape(b * t, p, d).transpose(1, 2).contiguous()
        diff = flow_loss(self.feat_decoder.estimator, self.config.dit_config.cfm_config, target,
                         condition.reshape(b * t, -1), previous, rows, progress, generator)  # fmt: skip
        logits = self.stop_logits(lm_hidden).reshape(b * t, 2)[rows].float()
        stop = F.cross_entropy(logits, labels.reshape(-1)[rows].long(), reduction="sum")
        return {"diff": (diff, int(rows.numel()) * p), "stop": (stop, int(rows.numel()))}

    def forward(
        self, text_tokens: Tensor, text_mask: Tensor, audio_feats: Tensor, audio_mask: Tensor, loss_mask: Tensor,
        position_ids: Tensor | None = None, labels: Tensor | None = None, *, progress: float = 0.0,
    ) -> dict[str, Tensor]:  # fmt: skip
        """Upstream's training forward and its arguments (position_ids unused there too): {"loss/diff",
        "loss/stop"}, each its mean over the supervised frames and positions."""
        del position_ids
        dtype = next(self.parameters()).dtype
        sums = self.loss_sums(text_tokens.long(), text_mask.to(dtype), audio_feats.to(dtype), audio_mask.to(dtype),
                              loss_mask.to(dtype), labels, progress)  # fmt: skip
        return {f"loss/{name}": total / max(count, 1) for name, (total, count) in sums.items()}
