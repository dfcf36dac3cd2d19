"""distributed.py: collectives on the process group's device (NCCL's rule, reproduced with gloo on CPU),
rank 0's numbers shared, gradients communicated once per update, ranks that cannot diverge, and an
exact two-process resume with dropout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from tts_lib.common.config_io import save_config
from tts_lib.data.manifest import read_manifest
from tts_lib.models import load_family
from tts_lib.training import checkpoints as ckpt
from tts_lib.training.adapters import AdapterConfig
from tts_lib.training.distributed import Dist, all_sum, from_main, sync_gradients
from tts_lib.training.train import TrainingLoss, backward_update, load_samples
from tts_lib.training.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
NO_BACKEND_FOR_CPU = "No backend type associated with device type cpu"  # what NCCL says to a CPU tensor


def collectives_on(rank: int, backend: str, device: str, folder: str) -> None:
    """One of two processes: all_sum and from_main over a `backend` group, with `device` as the training device."""
    dist.init_process_group(backend, init_method=f"file://{folder}/store", rank=rank, world_size=2)
    info = Dist(rank, 2, rank, torch.device(device, rank) if device == "cuda" else torch.device(device))
    try:
        found = {"sums": all_sum(info, rank + 1.0, 10.0), "shared": from_main(info, rank + 0.5)}
    except RuntimeError as e:
        found = {"error": str(e)}
    finally:
        dist.destroy_process_group()
    Path(folder, f"rank{rank}.json").write_text(json.dumps(found))


def run_collectives(tmp_path: Path, backend: str, device: str) -> list[dict]:
    mp.spawn(collectives_on, args=(backend, device, str(tmp_path)), nprocs=2)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_a_group_whose_only_backend_is_for_cuda_refuses_cpu_tensors_as_nccl_does(tmp_path):
    # "cuda:gloo" registers gloo for cuda tensors only, as NCCL is: the old all_sum, which always built its
    # tensor on the CPU, failed here at the first step of every multi-GPU run.
    found = run_collectives(tmp_path, "cuda:gloo", "cpu")
    assert all(NO_BACKEND_FOR_CPU in f["error"] for f in found)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: on a CPU build no tensor can sit on cuda")
def test_collectives_run_on_the_training_device_of_a_cuda_only_group(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs, one per process")
    found = run_collectives(tmp_path, "cuda:gloo", "cuda")
    assert [f["sums"] for f in found] == [[3.0, 20.0]] * 2
    assert [f["shared"] for f in found] == [[0.5]] * 2


@pytest.mark.slow
def test_gloo_on_cpu_sums_and_shares_rank_zeros_numbers(tmp_path):
    found = run_collectives(tmp_path, "gloo", "cpu")
    assert [f["sums"] for f in found] == [[3.0, 20.0]] * 2
    assert [f["shared"] for f in found] == [[0.5]] * 2  # rank 1 takes rank 0's 0.5, not its own 1.5


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_micro_batches_before_the_last_keep_their_gradients_local(prepared, one_process_group):
    from torch.nn.parallel import DistributedDataParallel

    family = load_family(prepared[0])
    samples = load_samples(family, [i for i in read_manifest(prepared[1]) if i.split == "train"])
    batches = [family.collate([s]) for s in samples[:3]]
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def reductions(micro_batches: int) -> int:
        model = family.load_model().train()
        ddp = DistributedDataParallel(TrainingLoss(family, model))
        calls = []

        def counting(state, bucket):  # an all-reduce of one bucket of gradients
            calls.append(bucket.index())
            fut = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut

        ddp.register_comm_hook(None, counting)
        backward_update(family, ddp, model, batches[:micro_batches], Dist(), nullcontext, scaler)
        assert all(p.grad is not None for p in model.parameters())
        return len(calls)

    assert reductions(3) == reductions(1) > 0  # three micro-batches, one round of communication


def test_sync_gradients_switches_ddp_between_local_and_reduced(one_process_group):
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(torch.nn.Linear(2, 2))
    with sync_gradients(ddp, sync=False):
        assert not ddp.require_backward_grad_sync
    with sync_gradients(ddp, sync=True):
        assert ddp.require_backward_grad_sync
    with sync_gradients(torch.nn.Linear(2, 2), sync=False):  # one process: nothing to switch
        pass


def torchrun_two(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.slow
def test_two_process_resume_with_dropout_is_bit_exact(prepared, tmp_path):
    # Each process draws its own dropout masks for its own batches, so each process's generators are saved.
    base, manifest = prepared
    for run, resume in (("straight", None), ("resumed", tmp_path / "straight" / "checkpoints" / "step_00000002")):
        config = TrainConfig(base_model=str(base), manifest=str(manifest), run_dir=str(tmp_path / run), max_steps=4,
                             max_tokens=256, grad_accum=2, val_every=0, save_every=2, log_every_seconds=60.0,
                             adapter=AdapterConfig(lora_dropout=0.3), resume_from=resume and str(resume))  # fmt: skip
        save_config(config, tmp_path / f"{run}.yaml")
        torchrun_two("-m", "tts_lib", "train", "--config", str(tmp_path / f"{run}.yaml"))
    a, b = (load_file(tmp_path / r / "final_adapter" / "adapter_model.safetensors") for r in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


DRIVER = """
    import os, sys
    import tts_lib.training.train as engine
    from tts_lib.common.config_io import load_config
    from tts_lib.training.train_config import TrainConfig

    # Validation numbers that differ between the ranks: rank 1 alone would stop early at step 4.
    values = iter({"0": [1.0, 0.5, 0.9], "1": [1.0, 2.0, 3.0]}[os.environ["RANK"]])

    def evaluate(*args, **kwargs):
        v = next(values)
        return {"val_loss": v, "val_slow_loss": 0.0, "val_codebook_loss": v, "val_top1": 0.0, "val_top5": 0.0}

    engine.evaluate = evaluate
    engine.train(load_config(TrainConfig, sys.argv[1]))
"""


@pytest.mark.slow
def test_ranks_follow_rank_zeros_validation_decisions(prepared, tmp_path):
    base, manifest = prepared
    config = TrainConfig(base_model=str(base), manifest=str(manifest), run_dir=str(tmp_path / "run"), max_steps=6,
                         max_tokens=256, val_every=2, save_every=100, early_stop_patience=1,
                         log_every_seconds=60.0)  # fmt: skip
    save_config(config, tmp_path / "run.yaml")
    (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
    torchrun_two(str(tmp_path / "driver.py"), str(tmp_path / "run.yaml"))
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))  # both ranks went on to step 6, where rank 0's patience ran out
    assert ckpt.best_info(tmp_path / "run")["step"] == 4
