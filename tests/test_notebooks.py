"""Each notebook runs headless under papermill, end to end, on the demo data."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_finetune_notebook_runs_headless(tmp_path):
    papermill = pytest.importorskip("papermill")
    out_dir = tmp_path / "run"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "finetune.ipynb"),
        str(tmp_path / "out.ipynb"),
        parameters={
            "dataset": str(ROOT / "data" / "demo"),
            "output_dir": str(out_dir),
            "max_tokens": 512,
            "headless": True,
        },
        kernel_name="python3",
        cwd=str(ROOT),
        progress_bar=False,
    )
    results = json.loads((out_dir / "results.json").read_text())
    assert results["summary"]["errors"] == 0 and results["summary"]["speakers"] >= 3
    assert results["batches_per_epoch"] > 0 and 0.5 < results["padding_efficiency"] <= 1.0
    assert (out_dir / "dataset.png").stat().st_size > 10_000
    assert (out_dir / "manifest.jsonl").exists()
