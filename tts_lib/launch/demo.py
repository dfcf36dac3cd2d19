"""The offline demo, runnable on a CPU with no downloads: python -m tts_lib demo

It runs the product's own notebook, `notebooks/finetune.ipynb`, headless through papermill, the way
a Brev user's Run All does, on the bundled `data/demo` with the random `tiny-demo` base model:
environment check, data preparation and validation, code extraction, cost estimate, a quick LoRA of
a few dozen steps, before/after WAVs, verified merge, lineage metadata and a download package, in
`runs/demo/v1`. The executed notebook is saved beside it. Running it again finds that version
finished and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "finetune.ipynb"


def ipc_kernel_manager():
    """A kernel manager that talks to the kernel over local sockets, not TCP: nothing listens on a port, and the
    kernel's "running over TCP without encryption" warning stays out of the headless log."""
    from jupyter_client.manager import KernelManager
    from traitlets import default

    class IPCKernelManager(KernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

        @default("ip")
        def _default_ip(self) -> str:
            # the sockets' path prefix; jupyter_client's default puts them in the working folder (notebooks/),
            # where a killed run would leave them for git and copies to trip on
            return str(Path(tempfile.mkdtemp(prefix="tts-lib-kernel-")) / "kernel-ipc")

    return IPCKernelManager
# Small enough for a CPU: a few seconds per step on the tiny model, a few minutes in all.
DEMO_PARAMETERS = {
    "training_mode": "quick_lora",
    "base_model": "tiny-demo",
    "max_steps": 40,
    "lora_lr": 1e-3,  # a random tiny model: a large step shows the loss move within seconds
    "max_tokens": 512,
    "listen_frames": 32,
    "headless": True,
}


def run(args: argparse.Namespace) -> int:
    try:
        import papermill
    except ImportError:
        print('error: the demo runs the notebook with papermill: pip install -e ".[headless]"', file=sys.stderr)
        return 2
    out = Path(args.out)
    version = out / "v1"
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TTS_LIB_PROGRESS", "plain")  # the kernel inherits it: plain lines, no widgets
    parameters = {**DEMO_PARAMETERS, "dataset": str(Path(args.data).resolve()), "output_dir": str(version.resolve())}
    print(f"running {NOTEBOOK.name} headless: {json.dumps(parameters)}", flush=True)
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(out / "finetune.ipynb"),
        parameters=parameters,
        kernel_name="python3",  # the Python running this command (ipykernel's own kernel)
        kernel_manager_class=ipc_kernel_manager(),
        cwd=str(NOTEBOOK.parent),  # where JupyterLab starts it: the notebook resolves its paths from the root
        progress_bar=False,
        stdout_file=sys.stdout,
        stderr_file=sys.stderr,
    )
    results = json.loads((version / "results.json").read_text(encoding="utf-8"))
    print(f"\nDone. Executed notebook: {out / 'finetune.ipynb'}")
    print(f"Merged model (upstream layout; tiny-demo generates noise): {version / results['merged_dir']}")
    print(f"Package for download: {version / results['package']}")
    return 0
