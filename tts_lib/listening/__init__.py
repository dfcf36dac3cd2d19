"""Stage 3, listening: the same sentences from several versions as WAVs and players, quality metrics, the
forgetting check on old held-out data, and plots of data and training."""
