"""python benchmarks/memory_table.py [--write | --tables-only] [--family NAME ...] [--max-tokens 1024 2048 ...]

The memory plan (`tts_lib.training.memory_plan`) of each model family's fine-tunes at its reference shape (Fish
Speech: OpenAudio S1-mini; VoxCPM2 at its published size): quick_lora and full, each max_tokens, gradient
checkpointing off and on; the GiB at the peak by what holds them, and the FLOPs per supervised token
(`tts_lib.training.flops`) beside. Traced with fake tensors on the CPU, bf16: no GPU and no weights needed,
about 10-15 s per row on 2 cores. `--family` traces only those families and keeps the others' stored plans.
Prints the table; --write stores the plans in tts_lib/training/memory_needs.json, the
one source of every memory figure, and rewrites the generated tables of README.md and docs/benchmarks.md
(tts_lib/training/memory_needs.py; tests/training/test_memory_needs.py checks env_check, launchable.yaml and
setup.sh) and the time and cost blocks of README.md and launchable.yaml (tts_lib/versions/time_table.py).
--tables-only rewrites the generated blocks from the stored plans without tracing again (after a change of
prices or of the text).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from tts_lib.common.fileio import atomic_write_text
from tts_lib.models import FAMILIES, reference_model, reference_shape
from tts_lib.training import memory_needs
from tts_lib.training.flops import flops_per_token
from tts_lib.training.memory_plan import plan_memory
from tts_lib.versions import time_table
from tts_lib.versions.cost import GPU_TABLE

ROOT = Path(__file__).resolve().parent.parent
MODES = ("quick_lora", "full")


def traced_rows(family: str, max_tokens: list[int]) -> list[dict]:
    shape = reference_shape(family)
    rows = []
    for mode in MODES:
        for checkpointing in (False, True):
            gflop = flops_per_token(mode, checkpointing, shape) / 1e9  # per token: the same at any budget
            for tokens in max_tokens:
                plan = dataclasses.asdict(plan_memory(mode, tokens, checkpointing, "bf16", shape))
                rows.append({**plan, "gflop_per_token": round(gflop, 4)})
                print(f"{family} {mode} {tokens} checkpointing={checkpointing}: peak {plan['peak_gib']:.2f} GiB",
                      flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--family", nargs="+", choices=list(FAMILIES), default=list(FAMILIES),
                        help="the families to trace (default: all); the others keep their stored plans")  # fmt: skip
    parser.add_argument("--write", action="store_true",
                        help="update memory_needs.json and the generated blocks of README.md, docs/benchmarks.md, "
                        "launchable.yaml")  # fmt: skip
    parser.add_argument("--tables-only", action="store_true", help="rewrite the generated blocks from the stored plans")
    args = parser.parse_args()
    if not args.tables_only:
        traced = {family: traced_rows(family, args.max_tokens) for family in args.family}
        if not args.write:
            print(json.dumps(traced, indent=1))
            return
        kept = memory_needs.stored()["families"] if memory_needs.NEEDS_FILE.is_file() else {}
        plans = {family: {"model": reference_model(family).title, "rows": traced[family]} if family in traced
                 else kept[family] for family in FAMILIES if family in traced or family in kept}  # fmt: skip
        data = {"generated_by": "python benchmarks/memory_table.py --write",
                "what": "tts_lib.training.memory_plan traced at each family's reference shape on fake tensors, "
                        "bf16: traced, not measured",
                "families": plans}  # fmt: skip
        atomic_write_text(memory_needs.NEEDS_FILE, json.dumps(data, indent=1) + "\n")
        memory_needs.stored.cache_clear()
    readme = ROOT / "README.md"
    for path, block, begin, end in (
        (readme, memory_needs.readme_block(GPU_TABLE), memory_needs.README_BEGIN, memory_needs.README_END),
        (ROOT / "docs" / "benchmarks.md", memory_needs.benchmarks_block(), memory_needs.TABLE_BEGIN,
         memory_needs.TABLE_END),
        (readme, time_table.readme_block(GPU_TABLE), time_table.README_BEGIN, time_table.README_END),
        (ROOT / "launchable.yaml", time_table.yaml_block(GPU_TABLE), time_table.YAML_BEGIN, time_table.YAML_END),
    ):  # fmt: skip
        path.write_text(memory_needs.replace_block(path.read_text(), block, begin, end, str(path)), encoding="utf-8")
        print(f"wrote the generated table of {path}")


if __name__ == "__main__":
    main()
