"""VoxCPM2's parts of a version's model card (tts_lib.versions.package writes the rest)."""

from __future__ import annotations

LICENCE = (
    "VoxCPM2's code and weights are released by OpenBMB under Apache-2.0, and so is this fine-tune: use, modify and "
    "share it, commercially too, keeping the licence and notices; credit OpenBMB (VoxCPM2) and this fine-tune."
)
RANDOM_LICENCE = (
    "The base model is tts_lib's tiny random VoxCPM2-layout checkpoint, not VoxCPM2: no VoxCPM2 weights are in this "
    "model. It is part of tts_lib (Apache-2.0)."
)
METRICS = (
    "`val_diff_loss` is the flow-matching loss of the latent patches (mean squared velocity error per latent frame, "
    "drawn with a fixed seed so validations compare), `val_stop_loss` the cross-entropy of the stop head, "
    "`val_loss` their sum. The exported model is the checkpoint with the lowest `val_diff_loss`."
)


def card_text(merged: str | None, adapter: str | None, random: bool) -> dict:
    what = ("A fine-tune of tts_lib's random tiny VoxCPM2-layout model (not VoxCPM2), made to test the pipeline: "
            "**everything it generates is noise**" if random else "A VoxCPM2 text-to-speech fine-tune")  # fmt: skip
    use_merged = [
        f"`{merged}` is a complete checkpoint in the hub's layout (config.json, model.safetensors, audiovae, "
        "tokenizer). With upstream voxcpm (`pip install voxcpm`):",
        "",
        "```python",
        "from voxcpm.model.voxcpm2 import VoxCPM2Model",
        "",
        f'model = VoxCPM2Model.from_local("{merged}", optimize=False)',
        'wav = model.generate("...")  # 48 kHz',
        "```",
        "",
        "With tts_lib:",
        "",
        "```python",
        "from tts_lib.models import load_family",
        "",
        f'family = load_family("{merged}")',
        "model = family.load_model()",
        "```",
        "",
    ]
    use_adapter = [
        "```python",
        "from peft import PeftModel",
        "from tts_lib.models.voxcpm import VoxCPM2Model",
        "",
        f'model = PeftModel.from_pretrained(VoxCPM2Model.from_pretrained("BASE_DIR"), "{adapter}")',
        "```",
    ]
    return {"what": what, "licence": RANDOM_LICENCE if random else LICENCE, "metrics": METRICS,
            "use_merged": use_merged, "use_adapter": use_adapter}  # fmt: skip
