"""Process-level runtime: device selection, the CPU adapter for Megatron-Core, distributed start-up,
local ranks (torchrun for commands, ``run_local_ranks`` for a function), helper processes."""
