"""VoxCPM2 (OpenBMB): a tokenizer-free text-to-speech model over continuous audio latents. Our own implementation,
checked against upstream `voxcpm==2.0.3` in tests/models/test_voxcpm_parity.py (docs/voxcpm.md, in progress)."""

from tts_lib.models.voxcpm.config import VoxCPM2Config
from tts_lib.models.voxcpm.model import VoxCPM2Model

__all__ = ["VoxCPM2Config", "VoxCPM2Model"]
