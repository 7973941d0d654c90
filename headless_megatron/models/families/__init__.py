"""The model families (:class:`~headless_megatron.models.family.ModelFamily`), one module each."""
