"""What the family registry (tts_lib.models.FAMILIES) imports for VoxCPM2: the family, its tiny checkpoint, its
model-card text, its reference shape (VoxCPM2 at the size published on the hub) and gpu-check's VAE and
generation speeds."""

import json

from tts_lib.models.voxcpm.card import card_text
from tts_lib.models.voxcpm.family import VoxCPMFamily as Family
from tts_lib.models.voxcpm.gpu_speeds import gpu_speeds
from tts_lib.models.voxcpm.planning import VoxCPMPlanningShape
from tts_lib.models.voxcpm.reference import REFERENCE_CONFIG
from tts_lib.models.voxcpm.tiny import make_tiny_checkpoint


def reference_shape() -> VoxCPMPlanningShape:
    """openbmb/VoxCPM2's shape (tts_lib/models/voxcpm/reference.py says where its sizes come from)."""
    return VoxCPMPlanningShape(json.dumps(REFERENCE_CONFIG, sort_keys=True))


__all__ = ["Family", "card_text", "gpu_speeds", "make_tiny_checkpoint", "reference_shape"]
