"""Each notebook runs headless under papermill, end to end, on tiny-demo and a slice of data/demo:
finetune.ipynb in quick_lora, two_phase and an incremental run from the first version, a rerun of a
finished version, a refused base model; then inference.ipynb over the three versions."""

import ast
import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from tts_lib.listening import EVAL_SENTENCES

papermill = pytest.importorskip("papermill")

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "data" / "demo"
pytestmark = pytest.mark.slow  # two to four minutes on two CPU cores: five kernels, three short fine-tunes

# Four steps each, small batches, short samples; only the first run times steps for the estimate.
FAST = {"max_steps": 4, "speaker_max_steps": 4, "max_tokens": 512, "estimate_steps": 0, "listen_frames": 8}


def copy_clips(dst: Path, speaker: str, numbers: range) -> None:
    (dst / speaker).mkdir(parents=True, exist_ok=True)
    for n in numbers:
        for ext in (".flac", ".lab"):
            shutil.copy(DEMO / speaker / f"{speaker}_{n:03d}{ext}", dst / speaker)


def execute(notebook: str, out: Path, **parameters) -> str:
    """Run notebooks/<notebook> with `parameters` (headless); returns all the text it printed."""
    papermill.execute_notebook(
        str(ROOT / "notebooks" / notebook), str(out), parameters={"headless": True, **parameters},
        kernel_name="python3", cwd=str(ROOT), progress_bar=False,
    )  # fmt: skip
    cells = json.loads(out.read_text())["cells"]
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
    merged = Path(r["merged_dir"])
    assert (merged / "model.pth").is_file() and (merged / "codec.pth").is_file()
    assert Path(r["package"]).is_file() and r["package"].endswith(f"{version}.tar.gz")
    assert (out / "MODEL_CARD.md").is_file()
    listen = out / "listen"
    for name in ("before", "after"):  # every Finnish test sentence from both models
        for k in range(len(EVAL_SENTENCES["fi"])):
            info = sf.info(listen / name / f"{k}.wav")
            assert info.frames > 0 and info.samplerate == 44100
    page = (listen / "players.html").read_text()
    assert page.count("<audio") == 4 and 'src="after/0.wav"' in page and "base64" not in page  # small: links
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
    assert (Path(r["adapter_dir"]) / "adapter_model.safetensors").is_file()
    assert r["metrics"]["lora"]["steps"] == 4
    assert "measured on this machine" in world["logs"]["v1"]  # the time estimate from timed steps


def test_two_phase(world):
    meta = check_version(world, "v2two", "two_phase")
    r = results(world, "v2two")
    assert (Path(r["language_base_dir"]) / "model.pth").is_file()
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


def test_inference_over_the_versions(world):
    out = world["root"] / "listen"
    reference = DEMO / "fi_male" / "fi_male_001.flac"
    log = execute("inference.ipynb", world["root"] / "inference.ipynb", project=str(world["project"]),
                  versions="v1,v2two,v3", output_dir=str(out), max_new_tokens=16,
                  reference_audio=str(reference), reference_text=reference.with_suffix(".lab").read_text())  # fmt: skip
    r = json.loads((out / "results.json").read_text())
    assert r["versions"] == ["v1", "v2two", "v3"] and set(r["wavs"]) == {"base", "v1", "v2two", "v3"}
    for paths in r["wavs"].values():
        assert len(paths) == 1 and sf.info(paths[0]).frames > 0
    assert (out / "players.html").read_text().count("<audio") == 4  # one sentence, four versions side by side
    assert "v1: adapter" in log and "v3: adapter" in log  # hot-swapped on the one loaded base
    assert "v2two: its adapter sits on other weights" in log  # two_phase's adapter is on its language base
    assert "* = current" in log  # the versions table
