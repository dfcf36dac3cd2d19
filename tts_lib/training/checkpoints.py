"""The run folder's checkpoint store: crash-safe saves, the `latest` pointer, best weights, pruning, resume checks.

On-disk layout of `run_dir/checkpoints/`:

    step_00001000/
        trainable.safetensors   MODEL: the requires_grad parameters only, name -> tensor
        state.pt                everything else in the payload (torch.save, loadable with weights_only=True)
    step_00002000/
    latest.json                 {"folder": "step_00002000", "step": 2000}
    best.safetensors            the weights that validated best (EMA averages when EMA is on); metadata:
                                step, metric, value. Weights only: a full fine-tune's resumable state is
                                several times its weights, so only the newest `keep_last` step folders hold it.

A step folder is written under a temporary name (`.tmp-step_...`) in the same parent and renamed
once both files are on disk, so a listed `step_*` folder is always complete; `latest.json` and
`best.safetensors` are replaced atomically. A kill at any moment leaves the previous ones valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from tts_lib.common.fileio import atomic_write_bytes, atomic_write_json
from tts_lib.training.distributed import copy_full_into, full_tensor

# Keys of the checkpoint dict that training code builds and load_checkpoint returns.
MODEL = "model"  # trainable weights only: name -> tensor of the requires_grad parameters
OPTIMIZER = "optimizer"
SCHEDULER = "scheduler"
SCALER = "scaler"
EMA = "ema"
RNG = "rng"
SAMPLER = "sampler"
STEP = "step"
EPOCH = "epoch"
BEST_METRIC = "best_metric"
EARLY_STOP = "early_stop"
CONFIG = "config"
DATA_FINGERPRINT = "data_fingerprint"
FORMAT_VERSION = "format_version"

CURRENT_FORMAT_VERSION = 2  # 2: RNG holds one state per process (a list); 1 (one dict) still loads
CHECKPOINTS_DIR = "checkpoints"
WEIGHTS_FILE = "trainable.safetensors"
STATE_FILE = "state.pt"
LATEST_FILE = "latest.json"
BEST_FILE = "best.safetensors"
TMP_PREFIX = ".tmp-"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


# ---------------------------------------------------------------- random number generators


def rng_state() -> dict[str, Any]:
    """Every global generator's state, as plain lists and tensors so weights_only loading accepts it."""
    version, internal, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any] | list[dict[str, Any]], rank: int = 0) -> None:
    """Restore `rng_state()`; given one state per process (a multi-process run), the one of `rank`."""
    if isinstance(state, list):
        state = state[rank]
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    npy = state["numpy"]
    key = np.asarray(npy["key"].numpy() if isinstance(npy["key"], torch.Tensor) else npy["key"], dtype=np.uint32)
    np.random.set_state((npy["bit_generator"], key, npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        # Resuming on fewer GPUs than were saved restores the ones that exist.
        for i, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), i)


# ---------------------------------------------------------------- trainable weights


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The requires_grad parameters as detached CPU copies (frozen base weights come from the base model).
    Under FSDP every rank must call it: the shards are gathered into whole tensors."""
    return {name: full_tensor(p.detach()).cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def tensor_differences(
    found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    """(missing names, unexpected names, (name, found shape, expected shape)) between two state dicts."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        (n, tuple(found[n].shape), tuple(expected[n].shape))
        for n in sorted(set(found) & set(expected))
        if found[n].shape != expected[n].shape
    ]
    return missing, unexpected, mismatched


def differences_text(
    found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], labels: tuple[str, str, str], shape: str
) -> str:
    """One clause per kind of difference, "; "-joined, empty when the two fit. `labels` start the missing,
    unexpected and shape clauses; `shape` formats one mismatch from `name`, `found` and `expected`."""
    missing, unexpected, shapes = tensor_differences(found, expected)
    mismatched = [shape.format(name=n, found=f, expected=e) for n, f, e in shapes]
    kinds = zip(labels, (missing, unexpected, mismatched))
    return "; ".join(f"{label}{short_list(names)}" for label, names in kinds if names)


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable weights into `model`; names and shapes must match exactly."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    labels = ("missing from checkpoint: ", "not trainable in the model: ", "shape differs: ")
    problems = differences_text(state, params, labels, "{name} saved {found}, model {expected}")
    if problems:
        raise ValueError(
            f"checkpoint weights do not fit the model's trainable parameters; {problems}. "
            "Resume with the same model, LoRA settings and frozen parts as the saved run."
        )
    for name, p in params.items():
        copy_full_into(p, state[name])


# ---------------------------------------------------------------- save and find


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def step_folder_name(step: int) -> str:
    return f"step_{step:08d}"


def save_checkpoint(run_dir: str | os.PathLike, step: int, payload: dict[str, Any]) -> Path:
    """Write `payload` as a new step folder and point `latest.json` at it; returns the folder."""
    if MODEL not in payload:
        raise ValueError(f"checkpoint payload needs the trainable weights under {MODEL!r}")
    weights = {name: t.detach().cpu().contiguous() for name, t in payload[MODEL].items()}
    rest = {k: v for k, v in payload.items() if k != MODEL}
    rest[STEP] = step
    rest[FORMAT_VERSION] = CURRENT_FORMAT_VERSION
    _check_weights_only(rest, "payload")

    parent = checkpoints_dir(run_dir)
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / step_folder_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}.", dir=parent))
    try:
        # Files go straight into the hidden folder: the folder rename is the atomic step, and
        # writing to disk directly avoids holding a second copy of large weights in memory.
        safetensors.torch.save_file(weights, str(tmp / WEIGHTS_FILE), metadata={STEP: str(step)})
        torch.save(rest, tmp / STATE_FILE)
        for name in (WEIGHTS_FILE, STATE_FILE):
            _fsync(tmp / name)
        if final.exists():
            # Re-saving a step (a run resumed from an earlier checkpoint): move the old one aside
            # first, since a directory cannot be renamed over a non-empty one.
            old = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}old-{final.name}.", dir=parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_json(parent / LATEST_FILE, {"folder": final.name, STEP: step})
    return final


def complete_step_folders(run_dir: str | os.PathLike) -> list[Path]:
    """Finished step folders, oldest first (temporary folders are hidden and ignored)."""
    parent = checkpoints_dir(run_dir)
    if not parent.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in parent.iterdir() if (m := _STEP_DIR.match(p.name)) and _is_complete(p)]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The folder `latest.json` names; the highest complete step folder if that file is missing or stale."""
    parent = checkpoints_dir(run_dir)
    pointed = _read_pointer(parent / LATEST_FILE)
    if pointed is not None:
        return pointed
    folders = complete_step_folders(run_dir)
    return folders[-1] if folders else None


def save_best(
    run_dir: str | os.PathLike, step: int, weights: dict[str, torch.Tensor], metric: float, name: str
) -> Path:
    """Replace the best weights (weights only: no optimiser state) with `weights`, validated at `step`."""
    tensors = {k: t.detach().cpu().contiguous() for k, t in weights.items()}
    # repr keeps every bit of the float; the metadata travels inside the one file that is renamed into place
    info = {STEP: str(step), "metric": name, "value": repr(float(metric))}
    return atomic_write_bytes(checkpoints_dir(run_dir) / BEST_FILE, safetensors.torch.save(tensors, metadata=info))


def best_info(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """{"step", "metric", "value"} of the best weights, or None when nothing was validated yet."""
    path = checkpoints_dir(run_dir) / BEST_FILE
    if not path.is_file():
        return None
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    return {STEP: int(meta[STEP]), "metric": meta["metric"], "value": float(meta["value"])}


def load_best(run_dir: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The best weights (name -> tensor, CPU), or None when nothing was validated yet."""
    path = checkpoints_dir(run_dir) / BEST_FILE
    return safetensors.torch.load_file(str(path)) if path.is_file() else None


def drop_best_after(run_dir: str | os.PathLike, step: int) -> dict[str, Any] | None:
    """Remove best weights validated after `step` (a resume from `step` redoes those steps); returns their info."""
    info = best_info(run_dir)
    if info is None or info[STEP] <= step:
        return None
    (checkpoints_dir(run_dir) / BEST_FILE).unlink()
    return info


def keep_last(run_dir: str | os.PathLike, k: int) -> list[Path]:
    """Delete step folders older than the newest `k` (never the one `latest.json` names) and leftover
    temporary folders of killed saves; returns what was removed."""
    if k < 1:
        raise ValueError(f"keep_last needs k >= 1 (the latest checkpoint is always kept), got {k}")
    latest = latest_checkpoint(run_dir)
    removed = [p for p in complete_step_folders(run_dir)[:-k] if latest is None or p.name != latest.name]
    parent = checkpoints_dir(run_dir)
    if parent.is_dir():
        removed += [p for p in parent.iterdir() if p.name.startswith(TMP_PREFIX) and p.is_dir()]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


# ---------------------------------------------------------------- load


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a step folder back into one dict with the named keys (MODEL holds the trainable weights)."""
    path = Path(path)
    if not _is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint folder (needs {WEIGHTS_FILE} and {STATE_FILE})")
    state = torch.load(path / STATE_FILE, map_location=map_location, weights_only=True)
    version = state.get(FORMAT_VERSION, 1)
    if version > CURRENT_FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format {version}; this tts_lib reads up to {CURRENT_FORMAT_VERSION}. "
            "Upgrade tts_lib to resume it."
        )
    state[MODEL] = safetensors.torch.load_file(str(path / WEIGHTS_FILE), device=str(map_location))
    return state


# ---------------------------------------------------------------- resume checks


def data_fingerprint(items: Iterable[Any]) -> str:
    """sha256 of the training data's identity: order-free, changes when any id, path, text, split or duration does."""
    rows = sorted(
        (str(it.id), str(it.audio), str(it.text), str(it.split),
         "" if it.duration is None else str(round(float(it.duration) * 1000)))
        for it in items
    )  # fmt: skip
    h = hashlib.sha256()
    for row in rows:
        # Unit and record separators cannot appear in the fields in practice, so rows cannot run together.
        h.update(("\x1f".join(row) + "\x1e").encode("utf-8"))
    return h.hexdigest()


def check_resume_compatible(saved: dict[str, Any], current: dict[str, Any], fields: list[str]) -> list[str]:
    """Differences in the given dotted `fields` (e.g. "lora.r") between a saved and the current config."""
    differences = []
    for field in fields:
        before, now = _lookup(saved, field), _lookup(current, field)
        if before != now:
            differences.append(f"{field}: saved {_show(before)}, now {_show(now)}")
    return differences


def changed_settings(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Every leaf setting that differs between two config dicts, as "key: saved X, now Y"."""
    if isinstance(saved, dict) and isinstance(current, dict):
        return [
            line
            for key in sorted(set(saved) | set(current), key=str)
            for line in changed_settings(saved.get(key, _MISSING), current.get(key, _MISSING), f"{prefix}{key}.")
        ]
    return [] if saved == current else [f"{prefix.rstrip('.')}: saved {_show(saved)}, now {_show(current)}"]


# ---------------------------------------------------------------- helpers

_MISSING = object()
_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.device)


def _lookup(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return _MISSING
        d = d[part]
    return d


def _show(value: Any) -> str:
    return "(not set)" if value is _MISSING else repr(value)


def _check_weights_only(obj: Any, where: str) -> None:
    """Fail before writing anything if torch.load(weights_only=True) could not read the payload back."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str | int):
                raise TypeError(f"checkpoint {where} has a key of type {type(k).__name__}; use str or int keys")
            _check_weights_only(v, f"{where}[{k!r}]")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _check_weights_only(v, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(
            f"checkpoint {where} is a {type(obj).__name__}; only tensors, dicts, lists, numbers, strings and None "
            "can be saved (convert it, e.g. numpy arrays with torch.from_numpy, dataclasses with asdict)"
        )


def _is_complete(folder: Path) -> bool:
    return (folder / WEIGHTS_FILE).is_file() and (folder / STATE_FILE).is_file()


def _read_pointer(path: Path) -> Path | None:
    """The folder the latest pointer names, if it still exists and is complete."""
    if not path.is_file():
        return None
    folder = path.parent / json.loads(path.read_text(encoding="utf-8"))["folder"]
    return folder if _is_complete(folder) else None


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # Makes the rename durable; not possible on every platform (Windows), where it is skipped.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def short_list(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
