"""``headless-megatron bench convert``: import-hf and export-hf of randomly initialised models at the
recipes' shapes (and GPT-2 small's and bert-base-uncased's), with wall time and peak memory beside the
bound the streaming conversion promises.

    headless-megatron bench convert                                  # tiny, 160m and 1b, 1GB files
    headless-megatron bench convert --shapes 1b bert-base --max-shard-size 1GB --tensor-model-parallel-size 2 \\
        --pipeline-model-parallel-size 2
    headless-megatron bench convert --shapes gpt2-124m bert-base-uncased      # HF's GPT-2 and BERT classes

The shapes (:data:`SHAPES`): the recipes' decoders (``tiny``, ``160m``, ``1b``: Llama-style, as
``LlamaForCausalLM``) and encoder (``bert-base``: pre-LN, as ``MegatronBertModel``), and a public
checkpoint's shape for HF's own GPT-2 and BERT classes: ``gpt2-124m`` (GPT-2 small as
``GPT2LMHeadModel``, whose ``Conv1D`` weights are stored ``[in, out]``) and ``bert-base-uncased``
(post-LN, as ``BertForMaskedLM``, with its two token types).

For each shape a Hugging Face model directory is made first (untimed): the ``transformers`` config of
the shape, the tensor names and shapes of its model class built on the meta device (those an import
reads: not a tied head's copy, buffers or a pooler), every tensor filled at random (normal, std
0.02; norm weights around 1) and written by the export's own shard writer, split by
``huggingface_hub`` as ``save_pretrained(max_shard_size=...)`` splits, with its index: building and
saving the real ``transformers`` model would hold it twice in memory and take minutes for nothing
the round trip needs. The token-type table is random too where the import keeps it (``bert``:
``num_tokentypes`` is ``type_vocab_size``), and MegatronBert's single row is zero: our pre-LN
encoders have no token types, so its import adds that row to the positions and its export writes a
zero row, which is bit-exact only for a zero row. A small BPE tokenizer is saved with it; the
config's vocabulary (50,304 for the 160m and 1b decoders, 50,257 for GPT-2, 30,592 for the recipes'
BERT, 30,522 for bert-base-uncased) is what the embedding has.

Then, each in a fresh process (so that peaks are the step's own): ``import-hf`` at the chosen layout
(its ranks are that process's children), ``export-hf`` of the result with ``--max-shard-size``, and
a tensor-by-tensor comparison of the export with the original: every tensor must be bit-equal.
Memory is what the step's process tree needs: the sum over its processes of their proportional
share of anonymous and shared-memory pages (PSS, ``/proc/PID/smaps_rollup``, sampled every 10 ms),
above the step process's own once torch, Megatron-Core and transformers are imported. (A plain RSS
sum would count the pages forked ranks share with their parent once per rank, and the page cache of
memory-mapped weight files.) The bound is one weight file plus twice the largest tensor. An
import's peak includes its ranks' start-up (interpreters, torch, Megatron-Core), which the tiny
shape's import measures: "import - ranks" is the peak less that, to compare with the bound.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# name: (model class, its config's arguments). The recipes' decoders are Llama-style and their encoder
# is MegatronBert (pre-LN); GPT-2 small and bert-base-uncased (post-LN) are public checkpoints' shapes
# of HF's GPT-2 and BERT classes (opt-in: not in the default).
SHAPES = {
    "tiny": ("LlamaForCausalLM", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=4, vocab_size=512,
                                      max_position_embeddings=64)),
    "160m": ("LlamaForCausalLM", dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                                      num_attention_heads=12, num_key_value_heads=12, vocab_size=50304,
                                      max_position_embeddings=2048)),
    "1b": ("LlamaForCausalLM", dict(hidden_size=2048, intermediate_size=5440, num_hidden_layers=16,
                                    num_attention_heads=8, num_key_value_heads=8, vocab_size=50304,
                                    max_position_embeddings=2048)),
    "bert-base": ("MegatronBertModel", dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                            num_attention_heads=12, vocab_size=30592, max_position_embeddings=512,
                                            type_vocab_size=1, layer_norm_eps=1e-12)),
    "gpt2-124m": ("GPT2LMHeadModel", dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257,
                                          activation_function="gelu_new")),
    "bert-base-uncased": ("BertForMaskedLM", dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                  num_attention_heads=12, vocab_size=30522,
                                                  max_position_embeddings=512, type_vocab_size=2,
                                                  layer_norm_eps=1e-12)),
}
DEFAULT_SHAPES = ["tiny", "160m", "1b"]
TOKENIZER_VOCAB = 500
SAMPLE_SECONDS = 0.01


def add_arguments(parser) -> None:
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=DEFAULT_SHAPES,
                        help="model shapes: the recipes' tiny, 160m and 1b decoders (the default) and bert-base "
                             "encoder; gpt2-124m (GPT2LMHeadModel) and bert-base-uncased (BertForMaskedLM)")
    parser.add_argument("--max-shard-size", default="1GB", help="export-hf --max-shard-size (default: 1GB)")
    parser.add_argument("--tensor-model-parallel-size", type=int, default=2, help="import layout (default: 2)")
    parser.add_argument("--pipeline-model-parallel-size", type=int, default=2, help="import layout (default: 2)")
    parser.add_argument("--scratch", metavar="DIR", help="where models are written (default: a temporary directory)")


@dataclass(frozen=True)
class StepResult:
    seconds: float
    peak_above_baseline: int
    """Bytes: the step's peak resident memory (its process tree) above the process's own baseline."""
    baseline: int


@dataclass(frozen=True)
class RoundTrip:
    shape: str
    parameters: int
    model_bytes: int
    largest_tensor_bytes: int
    max_shard_bytes: int
    import_step: StepResult
    export_step: StepResult
    weight_files: int
    tensors: int
    mismatched: list[str]

    @property
    def bound(self) -> int:
        return self.max_shard_bytes + 2 * self.largest_tensor_bytes


def run(args) -> int:
    from headless_megatron.convert.export import shard_size_bytes

    max_shard = shard_size_bytes(args.max_shard_size)
    layout = (args.tensor_model_parallel_size, args.pipeline_model_parallel_size)
    print(f"import at TP{layout[0]} x PP{layout[1]}, export with --max-shard-size {args.max_shard_size}; "
          f"{os.cpu_count()} CPUs; memory: peak PSS (anonymous + shared) of the step's process tree above its "
          "baseline", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="hm-bench-convert-", dir=args.scratch) as scratch:
        for shape in args.shapes:
            result = round_trip(shape, Path(scratch) / shape, max_shard, layout, progress=print)
            results.append(result)
            if result.mismatched:
                print(f"bench convert: error: {shape}: tensors not bit-equal after the round trip: "
                      f"{', '.join(result.mismatched[:5])}", file=sys.stderr)
                return 1
    print_table(results)
    return 0


def print_table(results: list[RoundTrip]) -> None:
    gb = 1e9
    # The tiny model's import is the ranks' own start-up (interpreters, torch, Megatron-Core).
    start_up = next((r.import_step.peak_above_baseline for r in results if r.shape == "tiny"), None)
    columns = ["shape", "params", "fp32 GB", "largest GB", "shard GB", "bound GB", "import s", "import GB",
               "import - ranks GB", "export s", "export GB", "export/bound", "files", "bit-equal"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---:" for _ in columns) + "|")
    for r in results:
        cells = [
            r.shape, f"{r.parameters / 1e6:,.0f}M", f"{r.model_bytes / gb:.2f}", f"{r.largest_tensor_bytes / gb:.3f}",
            f"{r.max_shard_bytes / gb:.2f}", f"{r.bound / gb:.2f}",
            f"{r.import_step.seconds:.1f}", f"{r.import_step.peak_above_baseline / gb:.2f}",
            "-" if start_up is None else f"{(r.import_step.peak_above_baseline - start_up) / gb:.2f}",
            f"{r.export_step.seconds:.1f}", f"{r.export_step.peak_above_baseline / gb:.2f}",
            f"{r.export_step.peak_above_baseline / r.bound:.2f}",
            str(r.weight_files), f"{r.tensors - len(r.mismatched)}/{r.tensors}",
        ]
        print("| " + " | ".join(cells) + " |", flush=True)


def round_trip(shape: str, directory: Path, max_shard_bytes: int, layout: tuple[int, int], progress=None) -> RoundTrip:
    """Make the random HF model of ``shape``, import it at ``layout``, export it back, compare."""
    say = progress or (lambda line: None)
    directory.mkdir(parents=True, exist_ok=True)
    source, run_directory, exported = directory / "hf", directory / "run", directory / "exported"
    say(f"{shape}: writing a random Hugging Face model to {source}")
    sizes = write_random_model(shape, source, max_shard_bytes)
    say(f"{shape}: {sum(sizes.values()) / 1e9:.2f} GB in fp32; import-hf at TP{layout[0]} x PP{layout[1]}")
    import_step = measured(_import_step, str(source), str(run_directory), *layout)
    say(f"{shape}: imported in {import_step.seconds:.1f} s; export-hf")
    export_step = measured(_export_step, str(run_directory), str(exported), max_shard_bytes)
    say(f"{shape}: exported in {export_step.seconds:.1f} s; comparing every tensor")
    mismatched = compare_weights(source, exported)
    return RoundTrip(shape, sum(size // 4 for size in sizes.values()), sum(sizes.values()), max(sizes.values()),
                     max_shard_bytes, import_step, export_step, len(list(exported.glob("*.safetensors"))),
                     len(sizes), mismatched)


def write_random_model(shape: str, directory: Path, max_shard_bytes: int) -> dict[str, int]:
    """The HF model directory of ``shape`` with random fp32 weights (see the module's docstring);
    returns each tensor's size in bytes."""
    import torch
    import transformers
    from huggingface_hub.serialization import split_state_dict_into_shards_factory

    from headless_megatron.convert.export import WEIGHTS_PATTERN, ShardWriter
    from headless_megatron.data.preprocess import prepare_tokenizer
    from headless_megatron.data.sources import open_corpus
    from headless_megatron.models.hf_mapping import hf_tensor_names

    tokenizer = prepare_tokenizer(open_corpus(["builtin:python-topics"]), train="bpe", vocab_size=TOKENIZER_VOCAB)
    architecture, values = SHAPES[shape]
    model_class = getattr(transformers, architecture)
    config = model_class.config_class(
        **values, architectures=[architecture], tie_word_embeddings=True, eos_token_id=tokenizer.eod,
        pad_token_id=tokenizer.pad, bos_token_id=None,
    )
    with torch.device("meta"):
        names_and_shapes = {name: tuple(tensor.shape) for name, tensor in model_class(config).state_dict().items()}
    conversion = _import_conversion(config)
    needed = hf_tensor_names(conversion, conversion.import_mode)
    missing = needed - names_and_shapes.keys()
    if missing:  # the conversion reads a tensor the HF class does not have: a wrong shape entry
        raise ValueError(f"{shape}: {architecture} has no {', '.join(sorted(missing)[:5])}")
    shapes = {name: shape for name, shape in names_and_shapes.items() if name in needed}
    # Without token types (MegatronBert) the import adds row 0 to the positions and the export writes
    # a zero row: only a zero row comes back bit for bit. A kept table (BERT's) is random like the rest.
    zero_token_types = not conversion.config.num_tokentypes
    split = split_state_dict_into_shards_factory(
        {name: math.prod(shape) * 4 for name, shape in shapes.items()}, get_storage_size=int,
        filename_pattern=WEIGHTS_PATTERN, max_shard_size=max_shard_bytes,
    )
    directory.mkdir(parents=True)
    config.save_pretrained(directory)
    tokenizer.save(directory)
    writer = ShardWriter(directory, split, sum(math.prod(shape) for shape in shapes.values()))
    generator = torch.Generator().manual_seed(0)
    for name, tensor_shape in shapes.items():
        tensor = torch.empty(tensor_shape)
        if "token_type" in name and zero_token_types:
            tensor.zero_()
        elif len(tensor_shape) == 1 and is_norm_weight(name):
            tensor.normal_(1.0, 0.02, generator=generator)
        else:
            tensor.normal_(0.0, 0.02, generator=generator)
        writer.add(name, tensor)
    writer.finish()
    return {name: math.prod(shape) * 4 for name, shape in shapes.items()}


def is_norm_weight(name: str) -> bool:
    """Whether the HF tensor ``name`` is a norm's weight (a scale, around 1): Llama's ``*norm``,
    BERT's ``LayerNorm``, MegatronBert's ``ln``, GPT-2's ``ln_1``, ``ln_2`` and ``ln_f``."""
    module, _, kind = name.rpartition(".")
    module = module.rpartition(".")[2]
    return kind == "weight" and ("norm" in module.lower() or module == "ln" or module.startswith("ln_"))


def _import_conversion(hf_config):
    """The conversion an import of ``hf_config`` uses (its tensors are those the import reads: a tied
    model's head is a copy and is not saved)."""
    from headless_megatron.convert.importer import TRAINING_PLACEHOLDERS, imported_train_config
    from headless_megatron.models.registry import hf_conversions

    family = hf_conversions()[hf_config.model_type]
    values = family.train_config_values(hf_config)
    vocab_size = values.pop("vocab_size")
    config = imported_train_config({**values, **TRAINING_PLACEHOLDERS, "vocab_size": vocab_size})
    return family(config, vocab_size)


def compare_weights(original: Path, exported: Path) -> list[str]:
    """Names of tensors that differ (dtype, shape or any bit) or are missing on either side, one tensor
    in memory at a time."""
    import torch

    from headless_megatron.convert.hf_weights import SafetensorsWeights

    before, after = SafetensorsWeights(original), SafetensorsWeights(exported)
    mismatched = sorted(before.names() ^ after.names())
    for name in sorted(before.names() & after.names()):
        a, b = before(name), after(name)
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a.view(torch.uint8), b.view(torch.uint8)):
            mismatched.append(name)
    return mismatched


# ---- Steps in fresh processes, with their peak memory ----


def measured(step, *args) -> StepResult:
    """Run ``step(*args)`` in a fresh process; its wall time and peak memory above that process's
    baseline (after imports)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measured_in_child, args=(queue, step, args))
    process.start()
    outcome = queue.get()
    process.join()
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _measured_in_child(queue, step, args) -> None:
    try:
        import psutil
        import torch  # noqa: F401  (the baseline includes the libraries every step imports)
        import transformers  # noqa: F401

        import headless_megatron.convert.export  # noqa: F401
        import headless_megatron.convert.importer  # noqa: F401

        me = psutil.Process()
        baseline = _tree_memory(me)
        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _tree_memory(me))
                done.wait(SAMPLE_SECONDS)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        step(*args)
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        queue.put(StepResult(seconds, peak[0] - baseline, baseline))
    except BaseException as error:  # noqa: BLE001 - handed to the parent, which raises it
        queue.put(RuntimeError(f"{step.__name__} failed: {error!r}"))


def _tree_memory(process) -> int:
    """Bytes of memory that ``process`` and its descendants need: the proportional share (PSS) of
    anonymous and shared-memory pages, from ``/proc/PID/smaps_rollup``. Plain RSS would count the
    pages that forked ranks share with their parent once per rank, and the page cache of
    memory-mapped weight files, which the kernel reclaims at will."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            rollup = Path(f"/proc/{member.pid}/smaps_rollup").read_text()
        except OSError:  # exited meanwhile
            continue
        for line in rollup.splitlines():
            if line.startswith(("Pss_Anon:", "Pss_Shmem:")):
                total += int(line.split()[1]) * 1024
    return total


def _import_step(model: str, output: str, tensor_parallel: int, pipeline_parallel: int) -> None:
    from headless_megatron.convert.importer import import_hf

    import_hf(model, output, tensor_parallel, pipeline_parallel)


def _export_step(checkpoint: str, output: str, max_shard_bytes: int) -> None:
    from headless_megatron.convert.export import export_hf

    export_hf(checkpoint, output, max_shard_size=max_shard_bytes)
