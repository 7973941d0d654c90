"""The model families (one folder each: ``gpt/``, ``bert/``), their registry and what they share:
layer specs, SDPA attention, layout-independent initialisation, Hugging Face tensor mappings."""
