"""VoxCPM2's full-size reference config (tts_lib/models/voxcpm/reference.py): upstream voxcpm 2.0.3 reads it, and
its model and ours have the same weights, name for name and shape for shape (both built on the meta device)."""

import copy
from types import SimpleNamespace

import torch
from upstream import upstream_voxcpm

from tts_lib.models.voxcpm import VoxCPM2Config, VoxCPM2Model
from tts_lib.models.voxcpm.reference import REFERENCE_CONFIG


def test_upstream_and_our_model_have_the_same_weights_at_the_reference_config():
    u = upstream_voxcpm()
    with torch.device("meta"):
        theirs = u.voxcpm2.VoxCPM2Model(u.voxcpm2.VoxCPMConfig.model_validate(copy.deepcopy(REFERENCE_CONFIG)),
                                        SimpleNamespace(vocab={}), SimpleNamespace(chunk_size=640, sample_rate=16000),
                                        device="cpu")  # fmt: skip
        ours = VoxCPM2Model(VoxCPM2Config.from_dict(copy.deepcopy(REFERENCE_CONFIG)))
    theirs_shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == theirs_shapes
    billions = sum(p.numel() for p in ours.parameters()) / 1e9
    assert 2.0 < billions < 2.5, billions  # OpenBMB's "2B" (the VAE lives in its own file)


def written_back(given: dict, written: dict) -> bool:
    """Every key of `given` in `written` with the same value (to_dict also writes the defaults)."""
    return all(written_back(v, written[k]) if isinstance(v, dict) else written.get(k) == v for k, v in given.items())


def test_the_reference_config_reads_without_unknown_keys_and_writes_back_unchanged():
    config = VoxCPM2Config.from_dict(copy.deepcopy(REFERENCE_CONFIG))
    assert config.unknown_keys == ["architecture"]
    assert written_back(REFERENCE_CONFIG, config.to_dict())
