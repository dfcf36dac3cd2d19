"""Stage 4, versions: fine-tuning modes and their plans (finetune.py runs the pipeline), parents and incremental
runs, merge/export with verification, upstream LoRA import, hot-swap, lineage, packages, cost and time."""
