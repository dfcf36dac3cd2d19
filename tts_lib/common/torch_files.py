"""Reading PyTorch files that may come from anyone: `weights_only=True` always, memory-mapped where possible.

    from tts_lib.common.torch_files import torch_load_weights_only
"""

from __future__ import annotations

from pathlib import Path

import torch


def torch_load_weights_only(path: str | Path) -> object:
    """torch.load with weights_only=True (untrusted files), memory-mapped when the file format allows."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format: no mmap
