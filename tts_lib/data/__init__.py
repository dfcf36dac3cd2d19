"""Stage 1, data: ingest any supported format, split, validate and report, bucket by length, encode audio into the
features cache, and prepare a dataset for training (prepare.py runs the stage)."""
