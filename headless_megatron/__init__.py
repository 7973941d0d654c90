"""headless-megatron: Megatron-Core trainer for headless language models (Contrastive Weight Tying)."""

__version__ = "0.1.0"
