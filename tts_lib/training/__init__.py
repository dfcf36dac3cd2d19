"""Stage 2, training: the loop (train.py, read top to bottom) and what it uses: config, optimiser, schedules, EMA,
checkpoints, distributed engines, logs and the live plot, adapters (peft), the device and its memory plan, FLOPs."""
