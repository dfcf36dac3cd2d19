"""Fish Speech: OpenAudio S1-mini and fish-speech-1.5 (dual autoregressive text-to-semantic model
plus the codec that turns audio into codes and back)."""
