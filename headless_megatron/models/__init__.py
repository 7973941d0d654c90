"""Megatron-Core models (GPT decoder, BERT encoder) with headless post-processing."""
