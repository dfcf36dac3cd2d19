"""Fish Speech: OpenAudio S1-mini and fish-speech-1.5 (a dual autoregressive text-to-semantic model
plus the codec that turns audio into codes and back). Architecture and compatibility guarantees:
docs/fish-speech.md."""

from tts_lib.models.fish_speech.codec import FishCodec, FishCodecConfig
from tts_lib.models.fish_speech.config import FishSpeechConfig
from tts_lib.models.fish_speech.lm import FishSpeechLM
from tts_lib.models.fish_speech.tokenizer import FishTokenizer

__all__ = ["FishCodec", "FishCodecConfig", "FishSpeechConfig", "FishSpeechLM", "FishTokenizer"]
