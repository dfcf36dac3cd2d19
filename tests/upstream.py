"""Upstream fish-speech 0.1.0 (Apache-2.0, the S1-mini era) as a test oracle.

`upstream_fish_speech()` makes `fish_speech` importable: if it is not installed, it pip-installs the
wheel once without its dependencies into `<repo>/.pytest_cache/upstream` and puts that folder on
sys.path. Upstream's model code also imports einops, loguru, loralib, transformers and tiktoken
(and inference.py click and tqdm); those come from the `[test]` extra. When something is missing
the tests are skipped with the reason, except under CI (the `CI` environment variable), where
parity must run and they fail instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
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


def _give_up(reason: str) -> None:
    message = f"upstream {UPSTREAM} unavailable: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: parity tests must run)")
    pytest.skip(message)


def _install() -> None:
    """pip install into a temporary folder, then rename: a killed install leaves no half folder."""
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="upstream.", dir=TARGET.parent))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(tmp), UPSTREAM]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            _give_up(f"`{' '.join(cmd[2:])}` failed: {(done.stderr or done.stdout).strip()[-500:]}")
        tmp.replace(TARGET)
    except (OSError, subprocess.TimeoutExpired) as e:
        _give_up(f"could not run pip ({e})")
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
