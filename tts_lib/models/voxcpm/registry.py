"""What the family registry (tts_lib.models.FAMILIES) imports for VoxCPM2."""

from tts_lib.models.voxcpm.card import card_text
from tts_lib.models.voxcpm.family import VoxCPMFamily as Family
from tts_lib.models.voxcpm.tiny import make_tiny_checkpoint


def reference_shape():
    raise ValueError("no reference shape for VoxCPM2 yet: the full-size config.json has not been read from here "
                     "(the memory and time tables need it); plan a run with the model's own folder instead")


__all__ = ["Family", "card_text", "make_tiny_checkpoint", "reference_shape"]
