"""Hugging Face export and import of our ``torch_dist`` checkpoints.

    from headless_megatron.convert.export import export_hf
    from headless_megatron.convert.importer import import_hf

    export_hf("runs/gpt_headless_tiny", "hf/tiny", mode="add_head")     # -> LlamaForCausalLM directory
    import_hf("hf/tiny", "runs/from_hf", tensor_model_parallel_size=2)  # -> torch_dist checkpoint

Modules:

- ``checkpoint_reader``: any checkpoint of ours, whatever TP/PP layout saved it, as full tensors and
  its :class:`~headless_megatron.config.TrainConfig`, in one process without ranks or GPUs;
- ``export``: checkpoint -> Hugging Face model directory (config, safetensors, tokenizer, model card);
- ``importer``: Hugging Face model directory -> checkpoint at a chosen TP/PP layout;
- ``streamed_save``: the import's save, each shard read from the HF files as it is written;
- ``atomic``: outputs written beside their place and renamed in on success.

What a family's tensors become is not here: each of a family's ``models/<name>/hf_<model_type>.py``
implements :class:`~headless_megatron.models.hf_mapping.Conversion` with the shared mappings of
:mod:`headless_megatron.models.hf_mapping`. Export finds a checkpoint's conversion by its config
(:func:`headless_megatron.models.registry.conversion_for`), import by the HF ``model_type``
(:func:`headless_megatron.models.registry.hf_conversions`).

Every expected failure raises :class:`ConversionError` with a one-line message.
"""

from headless_megatron.models.hf_mapping import ConversionError

__all__ = ["ConversionError"]
