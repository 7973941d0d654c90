"""Hugging Face export and import of our ``torch_dist`` checkpoints.

    from headless_megatron.convert.export import export_hf
    from headless_megatron.convert.importer import import_hf

    export_hf("runs/gpt_headless_tiny", "hf/tiny", mode="add_head")     # -> LlamaForCausalLM directory
    import_hf("hf/tiny", "runs/from_hf", tensor_model_parallel_size=2)  # -> torch_dist checkpoint

Modules:

- ``checkpoint_reader``: any checkpoint of ours, whatever TP/PP layout saved it, as full tensors and
  its :class:`~headless_megatron.config.TrainConfig`, in one process without ranks or GPUs;
- ``mapping``: what every model family shares: :class:`~mapping.TensorMapping` (one Megatron
  tensor <-> its Hugging Face tensors), Megatron's fused layouts (QKV grouped per query group,
  SwiGLU ``[gate; up]``, the padded vocabulary) and the :class:`~mapping.Conversion` contract;
- ``llama``: Llama-style decoders (``model: gpt``) <-> ``LlamaForCausalLM``;
- ``megatron_bert``: BERT-style encoders (``model: bert``) <-> ``MegatronBertForMaskedLM``
  (``MegatronBertModel`` for a headless encoder, which has no MLM head);
- ``export``: checkpoint -> Hugging Face model directory (config, safetensors, tokenizer, model card);
- ``importer``: Hugging Face model directory -> checkpoint at a chosen TP/PP layout;
- ``atomic``: outputs written beside their place and renamed in on success.

A new family's conversion is one more module implementing :class:`~mapping.Conversion`, returned by
its model family's ``conversion()`` (:mod:`headless_megatron.models.family`); export finds it by the
config's ``model``, import by the HF ``model_type`` (``importer.IMPORTABLE``).

Every expected failure raises :class:`ConversionError` with a one-line message.
"""

from headless_megatron.errors import UserError


class ConversionError(UserError):
    """A checkpoint or model directory that cannot be converted, in one line saying why."""
