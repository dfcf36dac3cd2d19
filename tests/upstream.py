"""Upstream packages as test oracles: fish-speech 0.1.0 (the S1-mini era) and voxcpm 2.0.3 (VoxCPM2), Apache-2.0.

`upstream_fish_speech()` and `upstream_voxcpm()` make the package importable: if it is not installed, they
pip-install the wheel once without its dependencies into `<repo>/.pytest_cache/upstream[-voxcpm]` and put that
folder on sys.path. fish-speech's model code also imports einops, loguru, loralib, transformers and tiktoken (and
inference.py click and tqdm); voxcpm's imports einops, pydantic, transformers, safetensors and tqdm: those come
from the `[test]` extra. voxcpm also imports torchaudio and librosa, which it uses only to read WAV files (never
in what the tests call) and which do not exist for our torch: stand-in modules take their place. When something
is missing the tests are skipped with the reason, except under CI (the `CI` environment variable), where parity
must run and they fail instead.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

UPSTREAM = "fish-speech==0.1.0"
TARGET = Path(__file__).resolve().parents[1] / ".pytest_cache" / "upstream"
MODULES = {
    "llama": "fish_speech.models.text2semantic.llama",
    "lora": "fish_speech.models.text2semantic.lora",
    "inference": "fish_speech.models.text2semantic.inference",
    "tokenizer": "fish_speech.tokenizer",
    "content_sequence": "fish_speech.content_sequence",
}
_cache: SimpleNamespace | None = None


def _give_up(reason: str, package: str = UPSTREAM) -> None:
    message = f"upstream {package} unavailable: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: parity tests must run)")
    pytest.skip(message)


def _install(package: str = UPSTREAM, target: Path = TARGET) -> None:
    """pip install into a temporary folder, then rename: a killed install leaves no half folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="upstream.", dir=target.parent))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(tmp), package]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            _give_up(f"`{' '.join(cmd[2:])}` failed: {(done.stderr or done.stdout).strip()[-500:]}", package)
        tmp.replace(target)
    except (OSError, subprocess.TimeoutExpired) as e:
        _give_up(f"could not run pip ({e})", package)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def upstream_fish_speech() -> SimpleNamespace:
    """Upstream's modules: `.llama`, `.lora`, `.inference`, `.tokenizer`, `.content_sequence`."""
    global _cache
    if _cache is not None:
        return _cache
    if importlib.util.find_spec("fish_speech") is None:
        if not (TARGET / "fish_speech").is_dir():
            _install()
        sys.path.insert(0, str(TARGET))
        importlib.invalidate_caches()
    try:
        modules = {name: importlib.import_module(path) for name, path in MODULES.items()}
    except ImportError as e:
        _give_up(f"importing it failed ({e}); install the [test] extra (einops, loguru, loralib, ...)")
    _cache = SimpleNamespace(**modules)
    return _cache


VOXCPM = "voxcpm==2.0.3"
VOXCPM_TARGET = TARGET.parent / "upstream-voxcpm"
VOXCPM_MODULES = {
    "minicpm4": "voxcpm.modules.minicpm4",
    "locenc": "voxcpm.modules.locenc",
    "locdit": "voxcpm.modules.locdit",
    "layers": "voxcpm.modules.layers",
    "lora": "voxcpm.modules.layers.lora",
    "audiovae": "voxcpm.modules.audiovae",
    "voxcpm2": "voxcpm.model.voxcpm2",
}
_voxcpm: SimpleNamespace | None = None


def _stand_in(name: str) -> None:
    """An empty module `name` with a spec (transformers asks importlib.util.find_spec about it)."""
    if name in sys.modules or importlib.util.find_spec(name) is not None:
        return
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = module


def upstream_voxcpm() -> SimpleNamespace:
    """Upstream VoxCPM's modules: `.minicpm4`, `.locenc`, `.locdit`, `.layers`, `.lora`, `.audiovae`, `.voxcpm2`,
    `.packers`."""
    global _voxcpm
    if _voxcpm is not None:
        return _voxcpm
    if importlib.util.find_spec("voxcpm") is None:
        if not (VOXCPM_TARGET / "voxcpm").is_dir():
            _install(VOXCPM, VOXCPM_TARGET)
        sys.path.insert(0, str(VOXCPM_TARGET))
        importlib.invalidate_caches()
    for name in ("torchaudio", "librosa"):
        _stand_in(name)
    try:
        modules = {name: importlib.import_module(path) for name, path in VOXCPM_MODULES.items()}
        # the training package's __init__ pulls in its trainer's dependencies (argbind, ...): the packer alone
        packers = Path(modules["voxcpm2"].__file__).parents[1] / "training" / "packers.py"
        spec = importlib.util.spec_from_file_location("voxcpm_training_packers", packers)
        modules["packers"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules["packers"])
    except ImportError as e:
        _give_up(f"importing it failed ({e}); install the [test] extra (einops, pydantic, ...)", VOXCPM)
    _voxcpm = SimpleNamespace(**modules)
    return _voxcpm
