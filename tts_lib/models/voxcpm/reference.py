"""VoxCPM2's full-size config (openbmb/VoxCPM2), for planning without downloading it: the memory plan, the time
table, env_check and gpu-check build the model from it on fake tensors (tts_lib.models.voxcpm.planning).

    from tts_lib.models.voxcpm.reference import REFERENCE_CONFIG

Where the sizes come from: the hub's config.json could not be read from the build machine. The values below are
the ones three public ports of VoxCPM2 write into their own test configs (an MLX port, an SGLang port and a TensorRT
port agree on every size given here), and they give upstream's model (voxcpm 2.0.3) at about 2.3 billion parameters
besides the VAE, the size OpenBMB announces as "2B". tests/models/test_voxcpm_reference.py checks that upstream's
model and ours have the same weights, name for name and shape for shape, at this config. The rotary factors are
placeholders (1.0): they change the values the model computes, not a size, so the plans are unaffected; a real
folder's config.json always wins (a run plans its own base model). When the hub file can be read, replace this with
it and the test will say whether anything moved.
"""

from __future__ import annotations

HEAD_DIM = 128  # kv_channels: 16 heads of 128 in every transformer

REFERENCE_CONFIG = {
    "architecture": "voxcpm2",
    "lm_config": {
        "bos_token_id": 1, "eos_token_id": 2, "hidden_size": 2048, "intermediate_size": 6144,
        "max_position_embeddings": 32768, "num_attention_heads": 16, "num_hidden_layers": 28,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000, "kv_channels": HEAD_DIM,
        "rope_scaling": {"type": "longrope", "long_factor": [1.0] * (HEAD_DIM // 2),
                         "short_factor": [1.0] * (HEAD_DIM // 2), "original_max_position_embeddings": 32768},
        "vocab_size": 73448, "use_mup": False, "scale_emb": 12, "dim_model_base": 256, "scale_depth": 1.4,
    },
    "patch_size": 4, "feat_dim": 64, "scalar_quantization_latent_dim": 512, "scalar_quantization_scale": 9,
    "residual_lm_num_layers": 8, "residual_lm_no_rope": True,
    "encoder_config": {"hidden_dim": 1024, "ffn_dim": 4096, "num_heads": 16, "num_layers": 12,
                       "kv_channels": HEAD_DIM},
    "dit_config": {"hidden_dim": 1024, "ffn_dim": 4096, "num_heads": 16, "num_layers": 12, "kv_channels": HEAD_DIM,
                   "cfm_config": {"sigma_min": 1e-6, "solver": "euler", "t_scheduler": "log-norm",
                                  "inference_cfg_rate": 2.0}},
    "audio_vae_config": {"encoder_dim": 128, "encoder_rates": [2, 5, 8, 8], "latent_dim": 64, "decoder_dim": 2048,
                         "decoder_rates": [8, 6, 5, 2, 2, 2], "sr_bin_boundaries": [20000, 30000, 40000],
                         "sample_rate": 16000, "out_sample_rate": 48000},
    "max_length": 8192,
    "dtype": "bfloat16",
}  # fmt: skip
