"""What the family registry (tts_lib.models.FAMILIES) imports for Fish Speech: the family, its tiny checkpoint,
its model-card text, its reference shape (OpenAudio S1-mini) and gpu-check's codec and generation speeds."""

from tts_lib.models.fish_speech.card import card_text
from tts_lib.models.fish_speech.family import FishSpeechFamily as Family
from tts_lib.models.fish_speech.gpu_speeds import gpu_speeds
from tts_lib.models.fish_speech.planning import s1_mini_shape as reference_shape
from tts_lib.models.fish_speech.tiny import make_tiny_checkpoint

__all__ = ["Family", "card_text", "gpu_speeds", "make_tiny_checkpoint", "reference_shape"]
