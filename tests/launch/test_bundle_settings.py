"""tts_lib.launch.bundle: the bundle root from any working directory, setup.sh's settings, and what `auto` means."""

from pathlib import Path

import pytest

from tts_lib.launch import bundle
from tts_lib.launch.bundle import find_root, read_setup, resolve_base_model, resolve_run, shown

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(tmp_path):
    """A bundle without the code: the marker files, a dataset folder and nothing else."""
    r = tmp_path / "bundle"
    (r / "notebooks").mkdir(parents=True)
    (r / "launchable.yaml").write_text("name: test\n")
    (r / "data" / "demo").mkdir(parents=True)
    return r


def checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_the_root_is_found_from_the_notebooks_folder(root, monkeypatch):
    monkeypatch.chdir(root / "notebooks")  # where JupyterLab starts a notebook's kernel
    assert find_root() == root.resolve()
    assert find_root(root / "notebooks") == root.resolve()
    assert find_root(ROOT / "notebooks") == ROOT
    assert shown(root / "runs" / "v1", root) == "runs/v1" and shown("/elsewhere/x", root) == "/elsewhere/x"


def test_relative_paths_come_from_the_root_whatever_the_working_directory(root, monkeypatch):
    monkeypatch.chdir(root / "notebooks")
    run = resolve_run("quick_lora", bundle.TINY_DEMO, "data/demo", "runs/v1", root=root, environ={})
    assert run.dataset == root / "data" / "demo" and run.output_dir == root / "runs" / "v1"
    assert run.base_folder == root / "checkpoints" / "tiny-demo" and run.demo
    assert "tiny-demo = checkpoints/tiny-demo" in run.summary() and "notebooks" not in run.summary()
    absolute = checkpoint(root.parent / "mine")
    run = resolve_run("full", str(absolute), str(root / "data"), str(root.parent / "out"), root=root, environ={})
    assert run.base_folder == absolute and run.output_dir == root.parent / "out" and not run.demo


def test_auto_without_setup_is_the_announced_demo(root):
    run = resolve_run(root=root, environ={})
    assert run.mode.value == "quick_lora" and run.base_model.value == "tiny-demo" and run.demo
    assert run.dataset == root / "data" / "demo"
    assert "setup.sh has not run here" in run.base_model.source
    banner = run.demo_banner()
    assert "RANDOM DEMO" in banner and "noise" in banner and "HF_TOKEN" in banner and "setup.sh" in banner


def test_the_banner_of_a_tiny_voxcpm2_folder_names_voxcpm2_and_no_token(root):
    from tts_lib.models import make_tiny_checkpoint

    folder = make_tiny_checkpoint(root / "checkpoints" / "tiny-voxcpm", family="voxcpm")
    run = resolve_run("quick_lora", str(folder), "data/demo", root=root, environ={})
    banner = run.demo_banner()
    assert run.demo and "THE RANDOM DEMO MODEL (tiny-voxcpm)" in banner and "BASE_MODEL=voxcpm2 bash setup.sh" in banner
    assert "HF_TOKEN" not in banner and "licence" not in banner and "openaudio" not in banner


def test_auto_takes_what_setup_prepared(root):
    model = checkpoint(root.parent / "models" / "fi-base")  # not where setup.sh puts models by default
    data = root.parent / "corpus"
    data.mkdir()
    (root / ".setup-ready").write_text(
        f"demo=0\nreason=\ntraining_mode=two_phase\nbase_model_dir={model}\ndata_dir={data}\nwarnings=0\n"
    )
    run = resolve_run(root=root, environ={"TRAINING_MODE": "full", "BASE_MODEL": "demo"})
    assert run.mode.value == "two_phase" and run.base_folder == model and run.dataset == data
    assert all(".setup-ready" in s for s in (run.mode.source, run.base_model.source, run.dataset_source))
    assert "fi-base" in run.summary() and not run.demo
    # explicit values always win
    run = resolve_run("quick_lora", "tiny-demo", "data/demo", root=root, environ={})
    assert run.mode.value == "quick_lora" and run.demo and run.dataset == root / "data" / "demo"
    assert run.mode.source == run.base_model.source == run.dataset_source == "notebook parameter"


def test_setup_in_demo_mode_says_why(root):
    (root / ".setup-ready").write_text(
        "demo=1\nreason=no access to fishaudio/openaudio-s1-mini\ntraining_mode=quick_lora\n"
        "base_model_dir=checkpoints/tiny-demo\ndata_dir=data/demo\nwarnings=0\n"
    )
    assert read_setup(root)["base_model_dir"] == "checkpoints/tiny-demo"
    run = resolve_run(root=root, environ={})
    assert run.base_model.value == "tiny-demo" and run.demo
    assert "no access to fishaudio/openaudio-s1-mini" in run.demo_banner()


def test_launch_parameters_when_setup_has_not_finished(root):
    checkpoint(root / "checkpoints" / "openaudio-s1-mini")
    (root / "data" / "fleurs_fi_fi").mkdir()
    environ = {"TRAINING_MODE": "full", "BASE_MODEL": "fishaudio/openaudio-s1-mini", "DATASET": "data/fleurs_fi_fi"}
    run = resolve_run(root=root, environ=environ)
    assert run.mode.value == "full" and run.base_folder == root / "checkpoints" / "openaudio-s1-mini"
    assert run.dataset == root / "data" / "fleurs_fi_fi" and "launch parameter DATASET" in run.dataset_source
    with pytest.raises(FileNotFoundError, match="DATASET='google/fleurs'.*setup.sh"):
        resolve_run(root=root, environ={"DATASET": "google/fleurs"})


def test_bad_settings_are_refused_with_their_source(root):
    with pytest.raises(ValueError, match="'lora' \\(notebook parameter\\).*quick_lora"):
        resolve_run("lora", root=root, environ={})
    with pytest.raises(ValueError, match="launch parameter TRAINING_MODE"):
        resolve_run(root=root, environ={"TRAINING_MODE": "fast"})
    with pytest.raises(FileNotFoundError, match="dataset data/dmeo \\(notebook parameter\\) does not exist"):
        resolve_run(dataset="data/dmeo", root=root, environ={})


def test_tiny_demo_is_written_once_into_checkpoints(root):
    folder = resolve_base_model("tiny-demo", root)
    assert folder == root / "checkpoints" / "tiny-demo" and (folder / "model.pth").is_file()
    assert bundle.is_random_demo(folder)
    stamp = (folder / "model.pth").stat().st_mtime_ns
    assert resolve_base_model("tiny-demo", root) == folder
    assert (folder / "model.pth").stat().st_mtime_ns == stamp
    assert not list(folder.parent.glob(".tiny-demo.tmp-*"))  # written through a temporary folder


def test_s1_mini_missing_says_to_run_setup(root):
    for name in ("openaudio-s1-mini", "fishaudio/openaudio-s1-mini"):
        with pytest.raises(FileNotFoundError, match="HF_TOKEN.*setup.sh"):
            resolve_base_model(name, root)
    folder = checkpoint(root / "checkpoints" / "openaudio-s1-mini")
    assert resolve_base_model("openaudio-s1-mini", root) == folder


def test_fish_speech_1_5_is_not_supported_yet(root):
    with pytest.raises(ValueError, match="not supported yet"):
        resolve_base_model("fish-speech-1.5", root)


def test_a_folder_path_must_be_a_checkpoint(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="auto, tiny-demo, openaudio-s1-mini, voxcpm2 or a checkpoint folder"):
        resolve_base_model(str(tmp_path / "nowhere"), root)
    folder = checkpoint(tmp_path / "ckpt")
    assert resolve_base_model("ckpt", root, relative_to=tmp_path) == folder
