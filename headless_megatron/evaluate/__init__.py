"""Evaluation of exported models and reports of training runs.

- ``lm_eval``: zero-shot tasks of EleutherAI's LM Evaluation Harness on a Hugging Face decoder
  (``headless-megatron eval lm``);
- ``glue``: GLUE fine-tuning of a Hugging Face encoder with the paper's protocol
  (``headless-megatron eval glue``);
- ``report``: loss and throughput plots and a summary table of runs (``headless-megatron report``).

Each command writes its results as JSON and markdown into ``--output``; the file names
(:data:`LM_RESULTS_FILE`, :data:`GLUE_RESULTS_FILE`) are also what ``report`` looks for in a run
directory. Modules import their heavy dependencies (``lm_eval``, ``transformers``, ``matplotlib``)
inside functions, so importing this package is cheap.
"""

from headless_megatron.errors import UserError

LM_RESULTS_FILE = "eval_lm.json"
LM_TABLE_FILE = "eval_lm.md"
GLUE_RESULTS_FILE = "glue.json"
GLUE_TABLE_FILE = "glue.md"


class EvaluationError(UserError):
    """A usage or input mistake, in one line (printed as ``headless-megatron eval: error: ...``)."""
