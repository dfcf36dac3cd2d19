"""Where the bundle is, what setup.sh prepared, and what `auto` means: the notebooks' starting point.

    from tts_lib.launch.bundle import resolve_run
    run = resolve_run(training_mode="auto", base_model="auto", dataset="auto", output_dir="runs/v1")
    print(run.summary())  # mode, base model, dataset and output folder, and where each came from

JupyterLab starts a notebook's kernel in the notebook's folder (`notebooks/`), papermill in the folder
it was started from: every relative path a notebook is given (dataset, output_dir, a base model folder)
is taken from the bundle root, the folder holding `launchable.yaml` and `notebooks/`, whatever the
working directory. The command line keeps the shell's meaning of a relative path.

Base-model names, the same everywhere (notebooks, CLI, setup.sh's BASE_MODEL, docs):

    auto               what setup.sh prepared on this machine (.setup-ready), else the launch parameter
                       BASE_MODEL, else tiny-demo
    tiny-demo          a random model written to checkpoints/tiny-demo on first use (its audio is noise)
    openaudio-s1-mini  checkpoints/openaudio-s1-mini, downloaded by setup.sh (gated: needs HF_TOKEN); every
                       released checkpoint in the family registry (tts_lib.models.published_models) likewise
    a folder           a checkpoint folder in its family's upstream layout (config.json names the family)

`dataset` and `training_mode` take `auto` the same way (launch parameters DATASET and TRAINING_MODE).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import tts_lib
from tts_lib.common.errors import MissingInputError, SettingError
from tts_lib.models import family_name_of, published_model, published_models, reference_model, refused_models

SETUP_FILE = ".setup-ready"  # written by setup.sh when it finishes: key=value lines, paths relative to the root
MODES = ("quick_lora", "two_phase", "full")
TINY_DEMO = "tiny-demo"
DEFAULT_MODEL = published_models()[0]  # what setup.sh downloads for `auto`: OpenAudio S1-mini
BASE_MODEL_NAMES = ("auto", TINY_DEMO, *(m.name for m in published_models()))  # anything else is a folder
NOT_SUPPORTED = tuple(refused_models())  # names people try, refused with the reason
DEMO_DATA = "data/demo"
DEFAULT_MODE = "quick_lora"


def find_root(start: str | Path | None = None) -> Path | None:
    """The bundle root above `start` (default: the working directory), else the one this package was
    installed from (an editable install), else None."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents, Path(tts_lib.__file__).resolve().parent.parent):
        if (folder / "launchable.yaml").is_file() and (folder / "notebooks").is_dir():
            return folder
    return None


def root_or_cwd() -> Path:
    return find_root() or Path.cwd().resolve()


def resolve_path(path: str | Path, root: Path) -> Path:
    """An absolute path as it is; a relative one from `root`; `~` expanded."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def shown(path: str | Path, root: Path) -> str:
    """A path as a person reads it: relative to the root when inside it."""
    p = Path(path)
    try:
        return p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(p)


def read_setup(root: Path) -> dict[str, str]:
    """The settings setup.sh wrote to `root/.setup-ready` ({} when setup has not finished there).
    Known keys: demo (0/1), reason, training_mode, base_model_dir, data_dir, warnings."""
    path = root / SETUP_FILE
    if not path.is_file():
        return {}
    settings = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            settings[key.strip()] = value.strip()
    return settings


def tiny_demo_folder(root: Path | None) -> Path:
    """Where tiny-demo lives: the bundle's checkpoints/ (setup.sh writes it there too), else the cache."""
    if root is not None and (root / "launchable.yaml").is_file():
        return root / "checkpoints" / TINY_DEMO
    from tts_lib.common.fileio import default_cache_dir

    return default_cache_dir() / TINY_DEMO


def resolve_base_model(name: str, root: Path | None = None, relative_to: Path | None = None) -> Path:
    """The checkpoint folder for a base-model name (see the module docstring). Folders are taken relative
    to `relative_to` (default: the working directory)."""
    root = root if root is not None else find_root()
    if name == "auto":
        where = root or Path.cwd()
        name = _auto_base_model(read_setup(where), os.environ, where).value
    if name == TINY_DEMO:
        folder = tiny_demo_folder(root)
        if not (folder / "model.pth").is_file():
            from tts_lib.common.fileio import atomic_folder
            from tts_lib.models import make_tiny_checkpoint

            with atomic_folder(folder, overwrite=True) as tmp:  # never a half-written model for the next run
                make_tiny_checkpoint(tmp, overwrite=True)
            print(f"wrote the tiny-demo base model to {shown(folder, root or Path.cwd())} (random weights: noise)")
        return folder
    if name in NOT_SUPPORTED:
        raise SettingError(
            f"{name} is not supported yet: {refused_models()[name]}; use base_model {DEFAULT_MODEL.name!r}"
        )
    if published := published_model(name):
        folder = (root or Path.cwd()) / "checkpoints" / published.name
        if not (folder / "config.json").is_file():
            where = f"in {root or '.'} (it downloads the weights to checkpoints/{published.name})"
            how = (
                f"{published.title} is gated on the Hugging Face hub. Accept its licence at "
                f"https://huggingface.co/{published.repo}, then run `HF_TOKEN=hf_... bash setup.sh` {where}"
                if published.gated
                else f"run `BASE_MODEL={published.name} bash setup.sh` {where}"
            )
            raise MissingInputError(f"{folder} not found: {how}, or set base_model to a folder you have")
        return folder
    folder = resolve_path(name, relative_to or Path.cwd())
    if not (folder / "config.json").is_file():
        raise MissingInputError(
            f"base_model {name!r}: expected one of {', '.join(BASE_MODEL_NAMES)} or a checkpoint folder in its "
            f"model's upstream layout (config.json names the model); {folder} has no config.json"
        )
    return folder


def is_random_demo(folder: str | Path) -> bool:
    """True for a tiny-demo checkpoint (random weights), wherever it lies."""
    from tts_lib.models import is_tiny_checkpoint

    return is_tiny_checkpoint(folder)


@dataclass
class Setting:
    value: str  # as resolved: a mode, a base-model name or folder, a dataset path
    source: str  # where it came from, for the first lines of the notebook's output


@dataclass
class Run:
    """What a notebook will train: resolved settings, absolute paths, and where each came from."""

    root: Path
    mode: Setting
    base_model: Setting  # .value: the base-model name, or its folder
    base_folder: Path  # the checkpoint folder
    dataset: Path
    dataset_source: str
    output_dir: Path
    setup: dict[str, str]

    def summary(self) -> str:
        lines = [
            f"training_mode: {self.mode.value:<20} ({self.mode.source})",
            f"base_model:    {self._base_text():<20} ({self.base_model.source})",
            f"dataset:       {shown(self.dataset, self.root):<20} ({self.dataset_source})",
            f"output_dir:    {shown(self.output_dir, self.root)}",
        ]
        return "\n".join(lines)

    def _base_text(self) -> str:
        folder = shown(self.base_folder, self.root)
        return f"{self.base_model.value} = {folder}" if self.base_model.value in BASE_MODEL_NAMES else folder

    @property
    def demo(self) -> bool:
        return is_random_demo(self.base_folder)

    def demo_banner(self) -> str:
        """The announcement at the top of a demo run: what it is, and what to do for the real model (the released
        model of the demo folder's family: a gated one needs its licence and HF_TOKEN, an open one only setup.sh)."""
        why = f" setup.sh ran in demo mode: {self.setup['reason']}." if self.setup.get("reason") else ""
        real = reference_model(family_name_of(self.base_folder) or "") or DEFAULT_MODEL
        lines = [
            f"THIS IS THE RANDOM DEMO MODEL ({self.base_folder.name}).",
            "Its weights are random: everything it generates is noise. The run shows every step and",
            f"produces every file, but it does not train a voice.{why}",
        ]
        if real.gated:
            lines += [
                f"To train the real model: accept the licence at https://huggingface.co/{real.repo},",
                "set HF_TOKEN (the launchable's launch parameter, or export HF_TOKEN=... in a terminal),",
                "run `bash setup.sh` in the repository, then Run All again (base_model 'auto' then picks it up),",
                "or set base_model to a checkpoint folder you have.",
            ]
        else:
            lines += [
                f"To train the real model ({real.title}, open weights, no token needed): run",
                f"`BASE_MODEL={real.name} bash setup.sh` in the repository, then Run All again (base_model",
                "'auto' then picks it up), or set base_model to a checkpoint folder you have.",
            ]
        width = max(len(line) for line in lines)
        bar = "=" * (width + 4)
        return "\n".join([bar, *(f"| {line:<{width}} |" for line in lines), bar])


def _launch_parameter(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _auto_mode(setup: dict[str, str], environ: Mapping[str, str]) -> Setting:
    if setup.get("training_mode"):
        return Setting(setup["training_mode"], f"auto: setup.sh, {SETUP_FILE}")
    if value := _launch_parameter(environ, "TRAINING_MODE"):
        return Setting(value, "auto: launch parameter TRAINING_MODE")
    return Setting(DEFAULT_MODE, "auto: the default")


def _auto_base_model(setup: dict[str, str], environ: Mapping[str, str], root: Path) -> Setting:
    if setup.get("base_model_dir"):
        folder = resolve_path(setup["base_model_dir"], root)
        value = TINY_DEMO if folder == tiny_demo_folder(root) else str(folder)
        return Setting(value, f"auto: setup.sh, {SETUP_FILE}")
    if value := _launch_parameter(environ, "BASE_MODEL"):
        if value in ("demo", TINY_DEMO):
            return Setting(TINY_DEMO, "auto: launch parameter BASE_MODEL")
        if published := published_model(value):
            return Setting(published.name, "auto: launch parameter BASE_MODEL")
        return Setting(str(resolve_path(value, root)), "auto: launch parameter BASE_MODEL")
    return Setting(TINY_DEMO, "auto: setup.sh has not run here, so the random demo model")


def _auto_dataset(setup: dict[str, str], environ: Mapping[str, str], root: Path) -> tuple[Path, str]:
    if setup.get("data_dir"):
        return resolve_path(setup["data_dir"], root), f"auto: setup.sh, {SETUP_FILE}"
    if value := _launch_parameter(environ, "DATASET"):
        if value == "demo":
            return root / DEMO_DATA, "auto: launch parameter DATASET"
        local = resolve_path(value, root)
        if local.exists():
            return local, "auto: launch parameter DATASET"
        raise MissingInputError(
            f"launch parameter DATASET={value!r} is not on this machine yet: run `bash setup.sh` in {root} to "
            "download it, or set dataset to a folder or file you have"
        )
    return root / DEMO_DATA, "auto: setup.sh has not run here, so the bundled demo data"


def resolve_run(
    training_mode: str = "auto",
    base_model: str = "auto",
    dataset: str = "auto",
    output_dir: str = "runs/v1",
    root: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Run:
    """The notebook's parameters made concrete. Explicit values win; `auto` takes setup.sh's file, then the
    launch parameters, then the demo. Relative paths are taken from the bundle root."""
    root = root or root_or_cwd()
    environ = os.environ if environ is None else environ
    setup = read_setup(root)
    mode = Setting(training_mode, "notebook parameter") if training_mode != "auto" else _auto_mode(setup, environ)
    if mode.value not in MODES:
        raise SettingError(f"training_mode {mode.value!r} ({mode.source}): expected one of auto, {', '.join(MODES)}")
    if base_model != "auto":
        named = base_model in BASE_MODEL_NAMES + NOT_SUPPORTED
        value = base_model if named else str(resolve_path(base_model, root))
        model = Setting(value, "notebook parameter")
    else:
        model = _auto_base_model(setup, environ, root)
    if dataset != "auto":
        data, data_source = resolve_path(dataset, root), "notebook parameter"
    else:
        data, data_source = _auto_dataset(setup, environ, root)
    if not data.exists():
        raise MissingInputError(f"dataset {shown(data, root)} ({data_source}) does not exist; expected a dataset "
                                "folder or file (Fish Speech layout, LJSpeech, CSV, JSONL or parquet)")  # fmt: skip
    folder = resolve_base_model(model.value, root, relative_to=root)
    return Run(root, mode, model, folder, data, data_source, resolve_path(output_dir, root), setup)
