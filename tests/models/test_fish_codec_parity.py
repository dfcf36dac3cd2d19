"""FishCodec against upstream's own codec code (fish-speech 0.1.0 `models/dac`, built on
descript-audio-codec), on the same random weights: identical codes, identical audio, and the same
checkpoint layout at full S1-mini size.

Upstream is installed once with `pip --no-deps --target .pytest_cache/upstream-codec` and imported
without torchaudio. What runs is upstream's real code: fish_speech.models.dac.{modded_dac,rvq},
dac.nn.{layers,quantize}, dac.model.base (CodecMixin) and audiotools.ml.layers.base (BaseModel), plus
einops. Only the package `__init__` files of `dac` and `audiotools` are bypassed (empty package shells
whose __path__ points at the real folders): they import audiotools.core, which needs torchaudio,
julius, scipy, rich and tensorboard, none of which the codec's numerics touch. A few names that
modded_dac.py and dac/model/base.py import but never use on the encode/decode path get stand-ins that
raise if touched: the `hydra`, `librosa` and `omegaconf` modules (OmegaConf) and audiotools'
AudioSignal (used only by CodecMixin.compress/decompress).

Offline, the tests skip; with CI set, they fail instead."""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tts_lib.models.fish_speech.codec import FishCodec, FishCodecConfig

UPSTREAM_DIR = Path(__file__).resolve().parents[2] / ".pytest_cache" / "upstream-codec"
PACKAGES = ("fish-speech==0.1.0", "descript-audio-codec==1.0.0", "descript-audiotools==0.7.2", "einops==0.8.1")
UPSTREAM_TOP_LEVEL = ("fish_speech", "dac", "audiotools", "einops", "hydra", "librosa", "omegaconf")
TINY = FishCodecConfig.tiny()
pytestmark = [  # upstream's own deprecated calls, not ours
    pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy machine OpenMP's barriers made the
    2-thread run of the tiny codec tests 3-6x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def install_upstream() -> Path:
    marker = UPSTREAM_DIR / "installed.txt"
    if marker.is_file() and marker.read_text() == "\n".join(PACKAGES):
        return UPSTREAM_DIR
    shutil.rmtree(UPSTREAM_DIR, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(UPSTREAM_DIR), *PACKAGES]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as err:
        unavailable(f"could not run pip to install upstream's codec ({' '.join(PACKAGES)}): {err}")
    if done.returncode != 0:
        unavailable(f"pip could not install upstream's codec ({' '.join(PACKAGES)}): {done.stderr.strip()[-500:]}")
    marker.write_text("\n".join(PACKAGES))
    return UPSTREAM_DIR


class StandIn:
    """Placeholder for a name upstream imports but the codec path never uses."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("stand-in for an import unused by the codec path was called")


def shell(name: str, folder: Path | None = None, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    if folder is not None:
        module.__path__ = [str(folder)]  # a package whose real submodules load, minus its __init__
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


@pytest.fixture(scope="module")
def upstream() -> Iterator[types.SimpleNamespace]:
    root = install_upstream()
    # Leave sys.modules as found: other tests may import fish_speech (tests/upstream.py) or the real
    # packages these shells stand in for.
    saved_modules = dict(sys.modules)
    saved_path = list(sys.path)
    try:
        shell("hydra")
        shell("librosa")
        shell("omegaconf", OmegaConf=StandIn)
        shell("audiotools", root / "audiotools", AudioSignal=StandIn)
        ml = shell("audiotools.ml", root / "audiotools" / "ml")
        shell("audiotools.ml.layers", root / "audiotools" / "ml" / "layers")
        ml.BaseModel = importlib.import_module("audiotools.ml.layers.base").BaseModel
        for name in ("dac", "dac.nn", "dac.model"):
            shell(name, root.joinpath(*name.split(".")))
        sys.path.insert(0, str(root))
        yield types.SimpleNamespace(
            modded_dac=importlib.import_module("fish_speech.models.dac.modded_dac"),
            rvq=importlib.import_module("fish_speech.models.dac.rvq"),
        )
    finally:
        sys.path[:] = saved_path
        for name in [n for n in sys.modules if n.split(".")[0] in UPSTREAM_TOP_LEVEL]:
            if name in saved_modules:
                sys.modules[name] = saved_modules[name]
            else:
                del sys.modules[name]


def build_upstream(up: types.SimpleNamespace, c: FishCodecConfig) -> torch.nn.Module:
    """Upstream's DAC as `modded_dac_vq.yaml` instantiates it, with sizes taken from `c`."""
    md = up.modded_dac

    def quantizer_transformer():
        args = md.ModelArgs(
            block_size=c.quantizer_block_size,
            n_layer=c.quantizer_layers,
            n_head=c.quantizer_heads,
            dim=c.quantizer_dim,
            intermediate_size=c.quantizer_hidden,
            head_dim=c.quantizer_head_dim,
            rope_base=c.rope_base,
            norm_eps=c.norm_eps,
        )
        return md.WindowLimitedTransformer(args, input_dim=c.latent_dim, window_size=c.quantizer_window, causal=True)

    quantizer = up.rvq.DownsampleResidualVectorQuantize(
        input_dim=c.latent_dim,
        n_codebooks=c.residual_codebooks,
        codebook_size=c.residual_codebook_size,
        codebook_dim=c.codebook_dim,
        quantizer_dropout=0.5,
        downsample_factor=list(c.downsample_factors),
        pre_module=quantizer_transformer(),
        post_module=quantizer_transformer(),
        semantic_codebook_size=c.semantic_codebook_size,
    )
    general = functools.partial(
        md.ModelArgs, block_size=c.encoder_block_size, head_dim=c.encoder_head_dim, rope_base=c.rope_base
    )
    model = md.DAC(
        encoder_dim=c.encoder_dim,
        encoder_rates=list(c.encoder_rates),
        decoder_dim=c.decoder_dim,
        decoder_rates=list(c.decoder_rates),
        quantizer=quantizer,
        sample_rate=c.sample_rate,
        encoder_transformer_layers=list(c.encoder_transformer_layers),
        decoder_transformer_layers=[4, 0, 0, 0],  # as in the yaml; upstream never wires it in
        transformer_general_config=general,
    )
    # Upstream hard-codes the encoder's attention window (512) in EncoderBlock; the attribute only
    # shapes the mask built in forward, so setting it gives upstream the tiny config's window.
    for module in model.modules():
        if isinstance(module, md.WindowLimitedTransformer) and module.window_size == 512:
            module.window_size = c.encoder_window
    return model.eval()


@pytest.fixture(scope="module")
def pair(upstream) -> tuple[torch.nn.Module, FishCodec]:
    torch.manual_seed(0)
    theirs = build_upstream(upstream, TINY)
    with torch.no_grad():  # layer scales start near 0 (1e-2, 1e-6): make the transformers and ConvNeXt blocks count
        for name, p in theirs.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.2, 0.5)
    ours = FishCodec(TINY)
    ours.load_state_dict(theirs.state_dict(), strict=True)  # same keys and shapes, or this raises
    return theirs, ours


def test_full_size_state_dict_matches_upstream(upstream):
    with torch.device("meta"):
        theirs = build_upstream(upstream, FishCodecConfig()).state_dict()
        ours = FishCodec().state_dict()
    assert list(ours) and set(ours) == set(theirs)
    for key, value in theirs.items():
        assert (ours[key].shape, ours[key].dtype) == (value.shape, value.dtype), key


def test_identical_codes_and_audio(pair):
    theirs, ours = pair
    g = torch.Generator().manual_seed(1)
    t = torch.arange(40000)
    waves = (0.3 * torch.sin(t / 20.0) + 0.2 * torch.randn(2, 40000, generator=g)).clamp(-1, 1)  # (B, T)
    lengths = torch.tensor([40000, 25000])  # 20 and 13 frames: both need padding to a whole frame

    with torch.no_grad():
        their_codes, their_code_lengths = theirs.encode(waves, lengths)
        their_audio, their_audio_lengths = theirs.decode(their_codes, their_code_lengths)
    codes, code_lengths = ours.encode_batch(waves, lengths)
    assert torch.equal(codes, their_codes)
    assert torch.equal(code_lengths, their_code_lengths)
    assert len(codes[0, 0].unique()) > 3  # the comparison is not between constant codes

    audio = ours.decode(codes)
    assert audio.shape == their_audio[:, 0].shape == (2, int(their_audio_lengths[0]))
    # Same operations in the same order: bit-identical on CPU (observed max abs diff 0.0).
    assert (audio - their_audio[:, 0]).abs().max() <= 1e-6

    with torch.no_grad():
        single, _ = theirs.encode(waves[1:, :25000])
    assert torch.equal(ours.encode(waves[1, :25000]), single[0])


def test_checkpoints_cross_load(upstream, pair, tmp_path):
    theirs, ours = pair
    x = torch.sin(torch.arange(30000) / 7.0) * 0.5

    # Upstream's state dict, as its training code would save it, loads into FishCodec...
    torch.save({"state_dict": {f"generator.{k}": v for k, v in theirs.state_dict().items()}}, tmp_path / "gen.ckpt")
    loaded = FishCodec.from_pretrained(tmp_path / "gen.ckpt", TINY)
    assert torch.equal(loaded.encode(x), ours.encode(x))

    # ...and FishCodec's save_pretrained output loads strictly into upstream's model.
    path = ours.save_pretrained(tmp_path / "codec.pth")
    fresh = build_upstream(upstream, TINY)
    fresh.load_state_dict(torch.load(path, map_location="cpu", mmap=True, weights_only=True), strict=True)
    with torch.no_grad():
        codes, _ = fresh.encode(x[None])
    assert torch.equal(codes[0], ours.encode(x))
