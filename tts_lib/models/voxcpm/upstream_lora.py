"""An adapter in VoxCPM's own LoRA format, beside the peft one: export_upstream_lora(ADAPTER_DIR, OUT_DIR, base)

Upstream's LoRA (`voxcpm.modules.layers.lora.LoRALinear`) keeps `<module>.lora_A` (r, in) and `<module>.lora_B`
(out, r) next to the Linear's weight and scales by alpha / r, as peft does: the export is a rename of peft's
`base_model.model.<module>.lora_A.weight`. `lora_config.json` carries upstream's `LoRAConfig` fields (which stacks
are adapted, r, alpha, the target names) and the base model it belongs to, so

    model = VoxCPM2Model.from_local(base, training=False, lora_config=LoRAConfig(**json["lora_config"]))
    loaded, skipped = model.load_lora_weights(OUT_DIR)  # skipped == []

Upstream adapts every Linear with a target name in the LMs (`base_lm`, `residual_lm`) or the DiT: an adapter whose
modules it cannot name that way (the local encoder, DoRA, fully trained embeddings) is refused, naming them.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from tts_lib.common.fileio import atomic_write_json, refuse_overwrite
from tts_lib.models.voxcpm.checkpoint import save_weights

PEFT_PREFIX = "base_model.model."
LM_ROOTS = ("base_lm.", "residual_lm.")
DIT_ROOT = "feat_decoder.estimator."
PROJECTIONS = ("enc_to_lm_proj", "lm_to_dit_proj", "res_to_dit_proj", "fusion_concat_proj")
WEIGHTS, CONFIG = "lora_weights.safetensors", "lora_config.json"


def export_upstream_lora(adapter_dir: str | Path, out: str | Path, base_model: dict, overwrite: bool = False) -> Path:
    """Write `adapter_dir` (a peft adapter of a VoxCPM2 model) as upstream's lora_weights.safetensors +
    lora_config.json in the folder `out` (made if missing). `base_model`: {"id", "hash"} of its base weights."""
    adapter_dir, out = Path(adapter_dir), Path(out)
    if not overwrite:
        for name in (WEIGHTS, CONFIG):
            refuse_overwrite(out / name)
    peft = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if peft.get("use_dora") or peft.get("use_rslora") or peft.get("modules_to_save"):
        raise ValueError(f"{adapter_dir}: upstream VoxCPM's LoRA has no DoRA, rsLoRA or fully trained modules; "
                         "this adapter uses one: keep its peft format (or the merged model)")  # fmt: skip
    state, lm, dit, proj = {}, set(), set(), set()
    for key, tensor in load_file(adapter_dir / "adapter_model.safetensors").items():
        name = key.removeprefix(PEFT_PREFIX).replace(".lora_A.weight", ".lora_A").replace(".lora_B.weight", ".lora_B")
        module = name.rsplit(".", 1)[0]
        short = module.rsplit(".", 1)[-1]
        if module.startswith(LM_ROOTS):
            lm.add(short)
        elif module.startswith(DIT_ROOT):
            dit.add(short)
        elif module in PROJECTIONS:
            proj.add(short)
        else:
            raise ValueError(f"{adapter_dir}: {module} has a LoRA, but upstream VoxCPM adapts only the LMs, the DiT "
                             "and the projections between them; keep this adapter's peft format")  # fmt: skip
        state[name] = tensor
    config = {
        "enable_lm": bool(lm), "enable_dit": bool(dit), "enable_proj": bool(proj),
        "r": int(peft["r"]), "alpha": _whole(peft["lora_alpha"]), "dropout": float(peft.get("lora_dropout") or 0.0),
        "target_modules_lm": sorted(lm) or ["q_proj", "v_proj", "k_proj", "o_proj"],
        "target_modules_dit": sorted(dit) or ["q_proj", "v_proj", "k_proj", "o_proj"],
        "target_proj_modules": sorted(proj) or list(PROJECTIONS),
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    save_weights(state, out / WEIGHTS)
    atomic_write_json(out / CONFIG, {"base_model": base_model, "lora_config": config})
    return out


def _whole(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x  # upstream's LoRAConfig types alpha as an int
