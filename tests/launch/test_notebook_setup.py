"""notebook-setup: the `tts_lib` kernel per environment (or per account), and the git filter that keeps
notebook outputs out of commits, checked with real git and jupyter_client."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tts_lib.launch.notebook_setup import DISPLAY_NAME, KERNEL_NAME, STRIP_KEYS, install_git_filter, install_kernel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def jupyter_home(tmp_path, monkeypatch):
    """The account's Jupyter data folder, in the sandbox."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter-data"))
    return tmp_path / "jupyter-data"


def test_the_kernel_runs_this_python_under_the_name_the_notebooks_use(tmp_path):
    folder = install_kernel(prefix=str(tmp_path / "env"), env={"TTS_LIB_CACHE": "/data/cache"})
    assert folder == tmp_path / "env" / "share" / "jupyter" / "kernels" / KERNEL_NAME
    spec = json.loads((folder / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable and spec["display_name"] == DISPLAY_NAME
    assert "--IPKernelApp.log_level=ERROR" in spec["argv"] and spec["env"] == {"TTS_LIB_CACHE": "/data/cache"}
    notebook = json.loads((ROOT / "notebooks" / "finetune.ipynb").read_text())
    assert notebook["metadata"]["kernelspec"]["name"] == KERNEL_NAME
    assert notebook["metadata"]["kernelspec"]["display_name"] == DISPLAY_NAME  # saving it changes nothing


def test_an_environment_kernel_comes_before_the_accounts():
    """Two clones, two environments: JupyterLab started from one finds that environment's `tts_lib` first."""
    from jupyter_core.paths import jupyter_path

    paths = jupyter_path("kernels")
    assert paths.index(str(Path(sys.prefix) / "share" / "jupyter" / "kernels")) == 0


def test_a_user_kernel_of_another_python_is_replaced_and_said(jupyter_home, capsys):
    other = jupyter_home / "kernels" / KERNEL_NAME
    other.mkdir(parents=True)
    (other / "kernel.json").write_text(json.dumps({"argv": ["/elsewhere/bin/python"], "display_name": "x",
                                                   "language": "python"}))  # fmt: skip
    folder = install_kernel(user=True)
    assert folder == other and json.loads((folder / "kernel.json").read_text())["argv"][0] == sys.executable
    said = capsys.readouterr().out
    assert "ran /elsewhere/bin/python" in said and "--name" in said


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_saved_outputs_never_reach_a_commit(tmp_path):
    repo = tmp_path / "clone"
    (repo / "notebooks").mkdir(parents=True)
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    assert install_git_filter(repo)
    clean = json.loads((ROOT / "notebooks" / "finetune.ipynb").read_text())
    saved = json.loads(json.dumps(clean))  # as JupyterLab saves it after Run All
    code = next(c for c in saved["cells"] if c["cell_type"] == "code")
    code["execution_count"] = 7
    saved["metadata"]["language_info"] = {"name": "python", "version": "3.11.7", "file_extension": ".py"}
    audio = '<audio src="data:audio/wav;base64,' + "A" * 100_000 + '">'
    code["outputs"] = [{"output_type": "display_data", "metadata": {}, "data": {"text/html": audio}}]
    (repo / "notebooks" / "finetune.ipynb").write_text(json.dumps(saved))
    git(repo, "add", "notebooks/finetune.ipynb")
    git(repo, "commit", "-q", "-m", "saved after Run All")
    committed = json.loads(git(repo, "show", "HEAD:notebooks/finetune.ipynb"))
    assert all(c.get("outputs", []) == [] and c.get("execution_count") is None for c in committed["cells"])
    assert committed["metadata"] == clean["metadata"]  # kernelspec kept, the Python version JupyterLab adds is not
    assert git(repo, "status", "--porcelain") == ""  # the working copy, outputs and all, reads as unchanged


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_notebook_saved_with_outputs_does_not_stop_a_pull(tmp_path):
    upstream, clone = tmp_path / "upstream", tmp_path / "clone"
    (upstream / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / "finetune.ipynb", upstream / "notebooks")
    git(upstream, "init", "-q")
    git(upstream, "config", "user.email", "t@example.com")
    git(upstream, "config", "user.name", "t")
    git(upstream, "add", ".")
    git(upstream, "commit", "-q", "-m", "first")
    subprocess.run(["git", "clone", "-q", str(upstream), str(clone)], check=True)
    git(clone, "config", "user.email", "t@example.com")
    git(clone, "config", "user.name", "t")
    assert install_git_filter(clone)
    saved = json.loads((clone / "notebooks" / "finetune.ipynb").read_text())  # Run All, then Save
    next(c for c in saved["cells"] if c["cell_type"] == "code")["outputs"] = [
        {"output_type": "stream", "name": "stdout", "text": "step 100/100\n" * 500}]  # fmt: skip
    (clone / "notebooks" / "finetune.ipynb").write_text(json.dumps(saved))
    changed = json.loads((upstream / "notebooks" / "finetune.ipynb").read_text())  # a new release of the notebook
    changed["cells"][0]["source"] = ["# The new notebook\n"]
    (upstream / "notebooks" / "finetune.ipynb").write_text(json.dumps(changed, indent=1) + "\n")
    git(upstream, "commit", "-q", "-am", "new notebook")
    pull = subprocess.run(["git", "-C", str(clone), "pull", "-q", "--no-rebase"], capture_output=True, text=True)
    assert pull.returncode == 0, pull.stderr
    assert json.loads((clone / "notebooks" / "finetune.ipynb").read_text())["cells"][0]["source"] == changed[
        "cells"][0]["source"]  # fmt: skip
    assert git(clone, "status", "--porcelain") == "" and git(clone, "stash", "list") == ""


def test_a_folder_outside_git_gets_no_filter(tmp_path):
    assert install_git_filter(tmp_path) is False


def test_the_committed_notebooks_are_what_the_filter_makes_of_them():
    """Otherwise a fresh clone with the filter installed shows both notebooks as modified."""
    notebooks = [str(p) for p in (ROOT / "notebooks").glob("*.ipynb")]
    verify = [sys.executable, "-m", "nbstripout", "--verify", "--extra-keys", STRIP_KEYS, *notebooks]
    result = subprocess.run(verify, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
