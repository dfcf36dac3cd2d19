"""tts_lib: fine-tune Fish Speech text-to-speech models for a new language or voice."""

__version__ = "0.1.0"
