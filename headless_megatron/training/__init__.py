"""The training loop and its components: checkpoints, metrics, data iteration."""
