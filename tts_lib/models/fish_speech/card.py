"""Fish Speech's parts of a version's model card (tts_lib.versions.package writes the rest):
what the model is, its licence, how to use the merged model and the adapter, what the validation metrics mean.
"""

from __future__ import annotations

LICENCE = (
    "The OpenAudio S1-mini weights are released under CC-BY-NC-SA-4.0, and a fine-tune is a derivative of "
    "them: this model inherits that licence. Non-commercial use only; give credit to Fish Audio "
    "(OpenAudio S1-mini) and to this fine-tune; share adaptations under the same licence. Check the licence "
    "of the base model you started from if it is not S1-mini (fish-speech-1.5 is CC-BY-NC-SA-4.0 as well)."
)
RANDOM_LICENCE = (
    "The base model is tts_lib's tiny-demo: random weights made by `python -m tts_lib make-tiny-model`, not "
    "OpenAudio S1-mini, so no S1-mini weights are in this model and their licence does not apply. tiny-demo is "
    "part of tts_lib (Apache-2.0)."
)
METRICS = (
    "`val_codebook_loss` is the mean cross-entropy of the codebook (fast transformer) tokens, `val_slow_loss` "
    "that of the semantic and text tokens of the slow transformer, `val_loss` their sum. The exported model is "
    "the checkpoint with the lowest `val_codebook_loss`."
)


def card_text(merged: str | None, adapter: str | None, random: bool) -> dict:
    """{"what", "licence", "metrics": str; "use_merged", "use_adapter": lines} for the model card."""
    what = (
        "A fine-tune of tts_lib's random tiny-demo model (not OpenAudio S1-mini), made to test the pipeline: "
        "**everything it generates is noise**"
        if random
        else "A Fish Speech (OpenAudio S1-mini) text-to-speech fine-tune"
    )
    use_merged = [
        f"`{merged}` is a complete checkpoint in upstream's layout (config.json, model.pth, tokenizer, "
        "codec.pth). With upstream fish-speech (0.1.0, `pip install fish-speech`):",
        "",
        "```bash",
        f'python -m fish_speech.models.text2semantic.inference --checkpoint-path {merged} --text "..." '
        "--output-dir out  # writes out/codes_0.npy",
        f"python -m fish_speech.models.dac.inference -i out/codes_0.npy --checkpoint-path {merged}/codec.pth "
        "-o out/speech.wav",
        "```",
        "",
        "Add `--prompt-text` and `--prompt-tokens` for a reference voice and `--device cpu` without a GPU.",
        "",
        "With tts_lib:",
        "",
        "```python",
        "from tts_lib.models.fish_speech.lm import FishSpeechLM",
        "",
        f'model = FishSpeechLM.from_pretrained("{merged}")',
        "```",
        "",
    ]
    use_adapter = [
        "```python",
        "from peft import PeftModel",
        "from tts_lib.models.fish_speech.lm import FishSpeechLM",
        "",
        f'model = PeftModel.from_pretrained(FishSpeechLM.from_pretrained("BASE_DIR"), "{adapter}")',
        "```",
    ]
    return {"what": what, "licence": RANDOM_LICENCE if random else LICENCE, "metrics": METRICS,
            "use_merged": use_merged, "use_adapter": use_adapter}  # fmt: skip
