"""load_tokenizer / Tokenizer: every source kind, the special tokens the models need, Megatron's duck type."""

import json
from collections import OrderedDict

import huggingface_hub.constants
import pytest
import sentencepiece
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from headless_megatron.data.builtin import builtin_documents
from headless_megatron.data.errors import DataError
from headless_megatron.data.sidecar import DatasetInfo, write_sidecar
from headless_megatron.data.tokenizer import Tokenizer, load_tokenizer, tokenizer_for_dataset
from headless_megatron.data.tokenizer_training import train_tokenizer

TOPICS = list(builtin_documents("python-topics"))


@pytest.fixture(scope="module")
def trained():
    return train_tokenizer("bpe", 400, TOPICS, source="topics")


def _bare_bpe_json(path, special_tokens=(), vocab_size=300):
    """A byte-level BPE tokenizer.json with the given special tokens and no roles assigned."""
    rust = RustTokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rust.train_from_iterator(TOPICS[:10], trainer)
    rust.save(str(path))
    return rust


def test_megatron_duck_type(trained):
    assert (trained.eod, trained.pad, trained.mask, trained.bos) == (0, 1, 2, None)
    assert trained.vocab_size == 400 == len(trained.vocab) == len(trained.inv_vocab)
    assert trained.inv_vocab[trained.eod] == "<|endoftext|>" and trained.vocab["<|mask|>"] == 2
    assert isinstance(trained.unique_identifiers, OrderedDict)
    assert trained.unique_identifiers["fingerprint"] == trained.fingerprint
    assert trained.fingerprint.startswith("sha256:")
    ids = trained.tokenize("Hello, world!\n")
    assert ids and all(isinstance(i, int) and 3 <= i < 400 for i in ids)
    assert trained.detokenize(ids) == "Hello, world!\n"
    assert trained.special_tokens == {"eod": 0, "pad": 1, "mask": 2, "bos": None}


def test_special_token_strings_in_a_document_are_plain_text(trained):
    text = "a literal <|endoftext|> and <|mask|> in the text"
    ids = trained.tokenize(text)
    assert not {trained.eod, trained.pad, trained.mask} & set(ids)
    assert trained.detokenize(ids) == text
    assert trained.detokenize([*ids, trained.eod]) == text + "<|endoftext|>"


def test_saved_directory_loads_in_transformers_and_back(trained, tmp_path):
    directory = trained.save(tmp_path / "tok")
    files = sorted(path.name for path in directory.iterdir())
    assert files == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert json.loads((directory / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert json.loads((directory / "special_tokens_map.json").read_text()) == {
        "eos_token": "<|endoftext|>", "pad_token": "<|pad|>", "mask_token": "<|mask|>"}
    text = TOPICS[3]
    for hf in (AutoTokenizer.from_pretrained(directory), PreTrainedTokenizerFast.from_pretrained(directory)):
        assert (hf.eos_token_id, hf.pad_token_id, hf.mask_token_id, len(hf)) == (0, 1, 2, 400)
        assert hf.encode(text, add_special_tokens=False) == trained.tokenize(text)
    again = load_tokenizer(directory)
    assert again.fingerprint == trained.fingerprint and again.added_special_tokens == ()
    assert again.source == str(directory)


def test_bare_tokenizer_json_takes_roles_from_conventional_names(tmp_path):
    _bare_bpe_json(tmp_path / "tokenizer.json", special_tokens=["<unk>", "</s>", "<pad>", "<mask>"])
    tokenizer = load_tokenizer(tmp_path / "tokenizer.json")
    assert (tokenizer.eod, tokenizer.pad, tokenizer.mask, tokenizer.bos) == (1, 2, 3, None)
    assert tokenizer.added_special_tokens == () and tokenizer.vocab_size == 300


def test_missing_special_tokens_are_added_after_the_vocabulary(tmp_path):
    _bare_bpe_json(tmp_path / "tokenizer.json")
    tokenizer = load_tokenizer(tmp_path / "tokenizer.json")
    assert tokenizer.added_special_tokens == ("<|endoftext|>", "<|pad|>", "<|mask|>")
    assert (tokenizer.eod, tokenizer.pad, tokenizer.mask, tokenizer.vocab_size) == (300, 301, 302, 303)
    reloaded = load_tokenizer(tokenizer.save(tmp_path / "saved"))
    assert reloaded.fingerprint == tokenizer.fingerprint and reloaded.special_tokens == tokenizer.special_tokens


def test_a_padding_token_equal_to_the_end_of_document_gets_its_own_id(tmp_path):
    rust = _bare_bpe_json(tmp_path / "tokenizer.json", special_tokens=["<|endoftext|>"])
    hf = PreTrainedTokenizerFast(tokenizer_object=rust, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    hf.save_pretrained(tmp_path / "d")
    tokenizer = load_tokenizer(tmp_path / "d")
    assert tokenizer.eod == 0 and tokenizer.pad not in (0, None) and tokenizer.mask not in (0, tokenizer.pad)
    assert tokenizer.added_special_tokens == ("<|pad|>", "<|mask|>")


def test_truncation_baked_into_a_tokenizer_json_never_cuts_a_document(tmp_path):
    rust = _bare_bpe_json(tmp_path / "plain.json", special_tokens=["</s>", "<pad>", "<mask>"])
    rust.enable_truncation(max_length=4)
    rust.save(str(tmp_path / "truncating.json"))
    plain, truncating = load_tokenizer(tmp_path / "plain.json"), load_tokenizer(tmp_path / "truncating.json")
    assert len(truncating.tokenize(TOPICS[0])) > 100
    assert truncating.tokenize(TOPICS[0]) == plain.tokenize(TOPICS[0])


def test_sentencepiece_model_is_converted_losslessly(tmp_path):
    paragraphs = [paragraph for topic in TOPICS[:30] for paragraph in topic.split("\n\n") if paragraph.strip()]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(paragraphs), model_prefix=str(tmp_path / "sp"), vocab_size=500, model_type="unigram",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2)
    reference = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    tokenizer = load_tokenizer(tmp_path / "sp.model")
    assert tokenizer.eod == reference.eos_id() and tokenizer.bos == reference.bos_id()
    assert tokenizer.added_special_tokens == ("<|pad|>", "<|mask|>") and tokenizer.vocab_size == 502
    for sentence in ("The with statement is used to wrap the execution of a block.", "literal </s>, <s> and <unk>"):
        assert tokenizer.tokenize(sentence) == reference.encode(sentence)  # control symbols never come from text
    for topic in TOPICS:
        assert tokenizer.detokenize(tokenizer.tokenize(topic)) == topic


def test_tokenizer_for_dataset_follows_the_sidecar_after_a_move(trained, tmp_path):
    original = tmp_path / "original"
    original.mkdir()
    trained.save(original / "p_tokenizer")
    info = DatasetInfo(
        documents=1, tokens=1, dtype="uint16", text_key="text", tokenizer={"path": "p_tokenizer"}, source={}
    )
    write_sidecar(original / "p_text_document.json", info)
    moved = original.rename(tmp_path / "moved")
    for reference in (moved / "p_text_document", moved / "p_text_document.json"):
        assert tokenizer_for_dataset(reference).fingerprint == trained.fingerprint


@pytest.mark.parametrize("name, message", [
    ("./nowhere", r"^tokenizer \./nowhere: no such file or directory$"),
    ("missing/tokenizer.json", r"^tokenizer missing/tokenizer\.json: no such file or directory$"),
])
def test_missing_paths(name, message):
    with pytest.raises(DataError, match=message):
        load_tokenizer(name)


def test_files_that_are_not_tokenizers(tmp_path):
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(
        DataError, match="expected a tokenizer directory, a tokenizer.json or a sentencepiece .model file"
    ):
        load_tokenizer(tmp_path / "vocab.txt")
    (tmp_path / "broken.json").write_text('{"model": 1}')
    with pytest.raises(DataError, match=r"broken\.json: not a tokenizers JSON file"):
        load_tokenizer(tmp_path / "broken.json")
    (tmp_path / "broken.model").write_bytes(b"\x00not a proto")
    with pytest.raises(DataError, match=r"broken\.model: not a sentencepiece model"):
        load_tokenizer(tmp_path / "broken.model")
    with pytest.raises(
        DataError, match="the directory has no tokenizer.json, tokenizer_config.json or tokenizer.model"
    ):
        load_tokenizer(tmp_path)


def test_hub_name_that_cannot_be_loaded(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once, without the network
    with pytest.raises(DataError, match=r"^tokenizer someone/no-such-tokenizer: not a local path, and loading it "
                                        r"from the Hugging Face Hub failed: "):
        load_tokenizer("someone/no-such-tokenizer")


def test_the_constructor_refuses_a_tokenizer_without_the_required_tokens(tmp_path):
    rust = _bare_bpe_json(tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match="build it with load_tokenizer"):
        Tokenizer(PreTrainedTokenizerFast(tokenizer_object=rust), source="bare")
