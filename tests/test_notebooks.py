"""Each notebook runs headless under papermill, end to end, on tiny-demo and a slice of data/demo, with the
kernel in `notebooks/` as JupyterLab starts it: finetune.ipynb in quick_lora, two_phase and an incremental run
from the first version, a rerun of a finished version, refusals, a failed start corrected in the same
output_dir; in a copy of the bundle, Run All with no parameter at all (the announced demo) and after a
setup.sh that prepared a model and a dataset elsewhere; then inference.ipynb over the three versions."""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from conftest import DEMO, copy_clips

from tts_lib.launch.demo import ipc_kernel_manager
from tts_lib.listening.players import EVAL_SENTENCES

papermill = pytest.importorskip("papermill")

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # two to four minutes on two CPU cores: five kernels, three short fine-tunes

# Four steps each, small batches, short samples; only the first run times steps for the estimate. The base model
# is named: "auto" would follow whatever setup.sh prepared in this checkout.
FAST = {"max_steps": 4, "speaker_max_steps": 4, "max_tokens": 512, "estimate_steps": 0, "listen_frames": 8,
        "base_model": "tiny-demo"}  # fmt: skip


def execute(notebook: str, out: Path, root: Path = ROOT, **parameters) -> str:
    """Run root/notebooks/<notebook> with `parameters` (headless), the kernel started in notebooks/ as
    JupyterLab does; returns all the text it printed."""
    papermill.execute_notebook(
        str(root / "notebooks" / notebook), str(out), parameters={"headless": True, **parameters},
        kernel_name="python3", cwd=str(root / "notebooks"), progress_bar=False,
        kernel_manager_class=ipc_kernel_manager(),
    )  # fmt: skip
    return printed(out)


def printed(executed: Path) -> str:
    cells = json.loads(executed.read_text())["cells"]
    return "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []))


@pytest.mark.parametrize("notebook", ["finetune.ipynb", "inference.ipynb"])
def test_papermill_sees_every_typed_parameter(notebook):
    """papermill --help-notebook skips a line with a second "=" (e.g. in its comment): keep comments free of it."""
    cells = json.loads((ROOT / "notebooks" / notebook).read_text())["cells"]
    [cell] = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    typed = [n.target.id for n in ast.parse("".join(cell["source"])).body if isinstance(n, ast.AnnAssign)]
    assert list(papermill.inspect_notebook(str(ROOT / "notebooks" / notebook))) == typed


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A project folder P, a small 3-speaker dataset (13 clips) and a grown copy (3 more clips), and
    the three chained fine-tunes: P/v1 quick_lora, P/v2two two_phase, P/v3 incremental from v1."""
    root = tmp_path_factory.mktemp("notebooks")
    first, grown = root / "data1", root / "data2"
    copy_clips(first, "fi_female", range(1, 7))
    copy_clips(first, "fi_male", range(1, 5))
    copy_clips(first, "am_speaker", range(1, 4))
    shutil.copytree(first, grown)
    copy_clips(grown, "fi_female", range(7, 10))
    project = root / "P"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TTS_LIB_CACHE", str(root / "cache"))  # papermill hands os.environ to the kernel
        logs = {
            "v1": execute("finetune.ipynb", root / "v1.ipynb", training_mode="quick_lora", dataset=str(first),
                          output_dir=str(project / "v1"), **{**FAST, "estimate_steps": 1}),
            "v2two": execute("finetune.ipynb", root / "v2two.ipynb", training_mode="two_phase", dataset=str(first),
                             output_dir=str(project / "v2two"), **FAST),
            "v3": execute("finetune.ipynb", root / "v3.ipynb", training_mode="quick_lora", dataset=str(grown),
                          parent_version="v1", output_dir=str(project / "v3"), **FAST),
        }  # fmt: skip
        yield {"root": root, "project": project, "logs": logs}


def results(world, version: str) -> dict:
    return json.loads((world["project"] / version / "results.json").read_text())


def check_version(world, version: str, mode: str) -> dict:
    """What every finished version has: merged model, package, listening WAVs, plots, lineage."""
    out = world["project"] / version
    r = results(world, version)
    assert r["version"] == version and r["mode"] == mode
    merged = out / r["merged_dir"]  # paths in results.json are relative to the version folder
    assert (merged / "model.pth").is_file() and (merged / "codec.pth").is_file()
    assert (out / r["package"]).is_file() and r["package"] == f"{version}.tar.gz"
    assert (out / "MODEL_CARD.md").is_file()
    listen = out / "listen"
    for name in ("before", "after"):  # every Finnish test sentence from both models
        for k in range(len(EVAL_SENTENCES["fi"])):
            info = sf.info(listen / name / f"{k}.wav")
            assert info.frames > 0 and info.samplerate == 44100
    page = (listen / "players.html").read_text()  # plays anywhere: every player carries its audio
    assert page.count("<audio") == 2 * len(EVAL_SENTENCES["fi"]) and "<code>after/0.wav</code>" in page
    assert page.count("data:audio/flac;base64,") == 2 * len(EVAL_SENTENCES["fi"])
    listening = json.loads((listen / "listening.json").read_text())
    assert len(listening["rows"]) == 2 * len(EVAL_SENTENCES["fi"]) and listening["language"] == "fi"
    assert listening["metrics"]["available"] is False  # no GPU here: not measured, so no numbers
    assert "quality metrics not available: " in world["logs"][version]
    assert (out / "dataset.png").stat().st_size > 10_000  # the data section's plot
    assert (out / "loss.png").stat().st_size > 10_000  # the live plot's final curve
    assert (out / "data" / "manifest.jsonl").is_file()
    assert "Problems: 0 errors" in world["logs"][version]  # the validation report is shown
    assert "step 4/4" in world["logs"][version]  # plain progress lines under papermill
    return json.loads((out / "metadata.json").read_text())


def test_quick_lora(world):
    meta = check_version(world, "v1", "quick_lora")
    r = results(world, "v1")
    assert r["parent"] is None and meta["parent"] is None and meta["number"] == 1
    assert (world["project"] / "v1" / r["adapter_dir"] / "adapter_model.safetensors").is_file()
    assert r["metrics"]["lora"]["steps"] == 4
    assert "measured on this machine" in world["logs"]["v1"]  # the time estimate from timed steps


def test_two_phase(world):
    meta = check_version(world, "v2two", "two_phase")
    r = results(world, "v2two")
    assert (world["project"] / "v2two" / r["language_base_dir"] / "model.pth").is_file()
    assert r["metrics"]["full"]["steps"] == 4 and r["metrics"]["lora"]["steps"] == 4
    assert meta["parent"] is None


def test_incremental_from_the_first_version(world):
    meta = check_version(world, "v3", "quick_lora")
    assert results(world, "v3")["parent"]["version"] == "v1"
    assert meta["parent"]["version"] == "v1"
    assert meta["samples"]["new"] == 3 and meta["samples"]["total"] == 16  # the grown data's 3 new clips
    assert meta["hyperparameters"]["lora_lr"] == pytest.approx(1e-5)  # a tenth of the parent's


def test_a_finished_version_is_shown_not_retrained(world):
    out = world["project"] / "v1"
    before = (out / "results.json").read_bytes(), (out / "metadata.json").read_bytes()
    wavs = {p: p.stat().st_mtime_ns for p in (out / "listen").rglob("*.wav")}
    listening = (out / "listen" / "listening.json").read_bytes()
    log = execute("finetune.ipynb", world["root"] / "again.ipynb", output_dir=str(out), **FAST)
    assert "already finished" in log and "step 1/" not in log and "(from an earlier run)" in log
    assert ((out / "results.json").read_bytes(), (out / "metadata.json").read_bytes()) == before
    assert {p: p.stat().st_mtime_ns for p in (out / "listen").rglob("*.wav")} == wavs  # kept, not made again
    assert (out / "listen" / "listening.json").read_bytes() == listening


def test_a_failure_stops_the_notebook_with_the_reason(world):
    with pytest.raises(papermill.PapermillExecutionError, match="not supported yet"):
        execute("finetune.ipynb", world["root"] / "bad.ipynb", base_model="fish-speech-1.5",
                output_dir=str(world["root"] / "other" / "v1"))  # fmt: skip


def error_output(executed: Path) -> dict:
    [error] = [o for c in json.loads(executed.read_text())["cells"] for o in c.get("outputs", [])
               if o["output_type"] == "error"]  # fmt: skip
    return error


def test_a_failed_start_is_corrected_in_the_same_output_dir(world):
    """A typo in the dataset path stops Run All with one line (no traceback of library frames); the corrected
    run in the same output_dir trains."""
    out, data = world["root"] / "fix" / "v1", world["root"] / "data1"
    typo = world["root"] / "typo.ipynb"
    with pytest.raises(papermill.PapermillExecutionError, match="dataset .*dta1 \\(notebook parameter\\) does not"):
        execute("finetune.ipynb", typo, dataset=str(world["root"] / "dta1"), output_dir=str(out), **FAST)
    error = error_output(typo)
    assert error["ename"] == "MissingInputError" and len(error["traceback"]) == 1
    execute("finetune.ipynb", world["root"] / "fixed.ipynb", dataset=str(data), output_dir=str(out), **FAST)
    assert json.loads((out / "results.json").read_text())["metrics"]["lora"]["steps"] == 4


def test_a_dataset_with_errors_ends_with_the_fix(world):
    bad = world["root"] / "bad-data"
    shutil.copytree(world["root"] / "data1", bad)
    (bad / "fi_male" / "fi_male_002.lab").write_text("   ")  # an empty transcript
    executed = world["root"] / "bad-data.ipynb"
    with pytest.raises(papermill.PapermillExecutionError, match="--drop-invalid"):
        execute("finetune.ipynb", executed, dataset=str(bad), output_dir=str(world["root"] / "bad-run" / "v1"), **FAST)
    error = error_output(executed)
    assert error["ename"] == "DataError" and len(error["traceback"]) == 1
    assert "1 errors" in error["evalue"] and "empty_text" in printed(executed)  # the report, then the fix


COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "runs", "checkpoints", ".cache", "__pycache__", "*.egg-info",
                                     ".setup-ready", "setup.log", ".pytest_cache", ".ruff_cache")  # fmt: skip


@pytest.fixture
def bundle_copy(tmp_path, monkeypatch):
    """A fresh copy of the bundle (no setup run, no runs) whose notebooks run in their own folder."""
    copy = tmp_path / "bundle"
    shutil.copytree(ROOT, copy, ignore=COPY_IGNORE)
    monkeypatch.setenv("TTS_LIB_CACHE", str(tmp_path / "cache"))
    for name in ("TRAINING_MODE", "BASE_MODEL", "DATASET"):
        monkeypatch.delenv(name, raising=False)
    return copy


def test_run_all_with_no_parameter_changed_is_the_announced_demo(bundle_copy, tmp_path):
    """What a user gets with every default, as JupyterLab runs it (papermill only switches to plain lines)."""
    log = execute("finetune.ipynb", tmp_path / "defaults.ipynb", root=bundle_copy)
    first = log.split("training_mode:")[0]
    assert "THIS IS THE RANDOM DEMO MODEL" in first and "noise" in first and "HF_TOKEN" in first
    assert "base_model:    tiny-demo = checkpoints/tiny-demo" in log and "dataset:       data/demo" in log
    assert "output_dir:    runs/v1" in log and "/notebooks/" not in log.split("GPU:")[0]
    out = bundle_copy / "runs" / "v1"  # relative to the repository root, not to notebooks/
    r = json.loads((out / "results.json").read_text())
    assert (out / r["package"]).is_file() and (out / r["merged_dir"] / "model.pth").is_file()
    assert "tiny-demo model (not OpenAudio S1-mini)" in (out / "MODEL_CARD.md").read_text()
    assert not (bundle_copy / "notebooks" / "runs").exists() and not (bundle_copy / "notebooks" / "data").exists()


def test_run_all_trains_what_setup_prepared(bundle_copy, tmp_path):
    """setup.sh given a model and a dataset outside the bundle; Run All with defaults trains on exactly those."""
    from tts_lib.common.fileio import checkpoint_hash
    from tts_lib.models.fish_speech.tiny import make_tiny_checkpoint

    model = make_tiny_checkpoint(tmp_path / "elsewhere" / "fi-model", seed=5)
    (model / "README.md").write_text("# fi-model\n")  # stands for a real model: not the random demo
    data = tmp_path / "elsewhere" / "fi-data"
    copy_clips(data, "fi_female", range(1, 7))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "VENV": sys.prefix, "SETUP_SKIP_INSTALL": "1",
           "BASE_MODEL": str(model), "DATASET": str(data), "TRAINING_MODE": "full", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    setup = subprocess.run(["bash", "setup.sh"], cwd=bundle_copy, env=env, capture_output=True, text=True)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    fast = {k: v for k, v in FAST.items() if k != "base_model"}  # speed only: model, data and mode stay "auto"
    log = execute("finetune.ipynb", tmp_path / "setup.ipynb", root=bundle_copy, **fast)
    assert "RANDOM DEMO" not in log and "training_mode: full" in log
    assert log.count("(auto: setup.sh, .setup-ready)") == 3
    out = bundle_copy / "runs" / "v1"
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["base_model"]["folder"] == str(model) and meta["base_model"]["hash"] == checkpoint_hash(
        model / "model.pth"
    )
    assert meta["mode"] == "full" and meta["samples"]["total"] == 6
    assert {Path(i["audio"]).parent.name for i in map(json.loads, (out / "data" / "manifest.jsonl").open())} == {
        "fi_female"
    }


def test_inference_over_the_versions(world):
    out = world["root"] / "listen"
    reference = DEMO / "fi_male" / "fi_male_001.flac"
    log = execute("inference.ipynb", world["root"] / "inference.ipynb", project=str(world["project"]),
                  versions="v1,v2two,v3", output_dir=str(out), max_new_tokens=16,
                  reference_audio=str(reference), reference_text=reference.with_suffix(".lab").read_text())  # fmt: skip
    r = json.loads((out / "results.json").read_text())
    assert r["versions"] == ["v1", "v2two", "v3"] and set(r["wavs"]) == {"base", "v1", "v2two", "v3"}
    for paths in r["wavs"].values():  # relative to output_dir
        assert len(paths) == 1 and sf.info(out / paths[0]).frames > 0
    assert (out / "players.html").read_text().count("<audio") == 4  # one sentence, four versions side by side
    assert "v1: adapter" in log and "v3: adapter" in log  # hot-swapped on the one loaded base
    assert "v2two: its adapter sits on other weights" in log  # two_phase's adapter is on its language base
    assert "* = current" in log  # the versions table


def test_the_notebook_fine_tunes_voxcpm2_too(tmp_path, monkeypatch):
    """The same notebook, base_model a (tiny random) VoxCPM2 folder: float latents, its own loss and metric,
    players at 48 kHz."""
    from tts_lib.models import make_tiny_checkpoint

    monkeypatch.setenv("TTS_LIB_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    copy_clips(data, "fi_female", range(1, 7))
    base = make_tiny_checkpoint(tmp_path / "tiny-voxcpm", family="voxcpm")
    log = execute("finetune.ipynb", tmp_path / "out.ipynb", training_mode="quick_lora", dataset=str(data),
                  output_dir=str(tmp_path / "P" / "v1"), **{**FAST, "base_model": str(base)})  # fmt: skip
    assert "best val_diff_loss" in log and "merged and verified" in log
    results = json.loads((tmp_path / "P" / "v1" / "results.json").read_text())
    wavs = sorted((tmp_path / "P" / "v1" / "listen" / "after").glob("*.wav"))
    assert results["metrics"]["lora"]["best_val_diff_loss"] > 0 and wavs
    assert sf.info(wavs[0]).samplerate == 48000
    # and inference.ipynb over that project: the version hot-swapped on the loaded base, a reference voice
    reference = DEMO / "fi_male" / "fi_male_001.flac"
    out = tmp_path / "listen"
    log = execute("inference.ipynb", tmp_path / "inference.ipynb", project=str(tmp_path / "P"), versions="v1",
                  output_dir=str(out), max_new_tokens=16, reference_audio=str(reference),
                  reference_text=reference.with_suffix(".lab").read_text())  # fmt: skip
    r = json.loads((out / "results.json").read_text())
    assert set(r["wavs"]) == {"base", "v1"} and "v1: adapter" in log
    assert all(sf.info(out / paths[0]).samplerate == 48000 for paths in r["wavs"].values())
