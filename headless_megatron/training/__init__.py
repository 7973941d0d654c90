"""The training loop and its components: the optimizer and schedule, the checkpoint policy, the run
directory, Megatron-Core save/load, metrics, stop signals."""
