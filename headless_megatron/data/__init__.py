"""Data preparation: text corpora to Megatron indexed datasets (``.bin/.idx``) and their tokenizers.

One module per concept, imported by their full names (this package imports nothing, so that the
CLI and the tokenization workers stay light):

- ``builtin``: the embedded corpora (``builtin:python-docs``), real English text with no download;
- ``sources``: reading inputs (built-in, local files, Hugging Face Hub datasets) and ``--shard``;
- ``tokenizer``: ``load_tokenizer`` / ``tokenizer_for_dataset``, the one tokenizer type used everywhere;
- ``tokenizer_training``: ``--train-tokenizer {bpe,unigram}``;
- ``workers``: tokenization in a process pool with bounded in-flight work;
- ``indexed``: atomic writing of ``.bin/.idx`` + sidecar + tokenizer, and merging shards;
- ``sidecar``: the JSON description written next to each dataset;
- ``preprocess``: the pipeline behind ``headless-megatron preprocess``;
- ``errors``: ``DataError``, the one error type for bad input or usage.
"""
