"""Process-level runtime: device selection, the CPU adapter for Megatron-Core, distributed start-up."""
