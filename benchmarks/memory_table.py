"""python benchmarks/memory_table.py [--max-tokens 1024 2048 4096 8192] [--precision bf16]

The memory plan (`tts_lib.memory_plan`) of S1-mini fine-tunes as a Markdown table for docs/benchmarks.md:
quick_lora and full, each max_tokens, gradient checkpointing off and on; the GiB at the peak by what
holds them, and the FLOPs per supervised token (`tts_lib.flops`) beside. Traced with fake tensors
on the CPU: no GPU and no weights needed, about 15 s per row on 2 cores.
"""

from __future__ import annotations

import argparse

from tts_lib.flops import flops_per_token
from tts_lib.memory_plan import CATEGORIES, plan_memory

MODES = ("quick_lora", "full")


def table(max_tokens: list[int], precision: str) -> str:
    header = ["mode", "max_tokens", "checkpointing", *CATEGORIES, "peak GiB", "peak during", "GFLOP/token"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for mode in MODES:
        for checkpointing in (False, True):
            for tokens in max_tokens:
                plan = plan_memory(mode, tokens, checkpointing, precision)
                parts = [f"{getattr(plan, c + '_gib'):.2f}" for c in CATEGORIES]
                flops = f"{flops_per_token(mode, checkpointing) / 1e9:.2f}"  # per token: the same at any budget
                row = [mode, str(tokens), "on" if checkpointing else "off", *parts, f"**{plan.peak_gib:.2f}**",
                       plan.peak_during, flops]  # fmt: skip
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    args = parser.parse_args()
    print(table(args.max_tokens, args.precision))


if __name__ == "__main__":
    main()
