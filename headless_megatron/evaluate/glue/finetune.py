"""One fine-tuning run with the paper's protocol (Sec. 4.1 and App. E): a fresh
``AutoModelForSequenceClassification`` per task and seed, AdamW, linear warmup then a constant
learning rate, the validation score after every epoch, the best epoch's score kept."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any

from headless_megatron.evaluate.glue.data import Examples, GlueTask
from headless_megatron.evaluate.glue.metrics import balanced_cross_entropy, score


@dataclasses.dataclass(frozen=True)
class Settings:
    """The fine-tuning protocol; the defaults are the paper's."""

    lr: float = 1e-5
    weight_decay: float = 0.01
    batch_size: int = 32
    epochs: int = 10
    warmup_ratio: float = 0.1
    max_length: int = 128
    balanced_ce: bool = True
    eval_batch_size: int = 128
    limit: int | None = None  # at most this many examples per split (quick checks only)


def _encode(tokenizer, examples: Examples, max_length: int) -> list[dict[str, list[int]]]:
    encoded = tokenizer(*examples.texts, truncation=True, max_length=max_length)
    keys = [key for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded]
    return [{key: encoded[key][i] for key in keys} for i in range(len(examples))]


def _batches(tokenizer, features, labels, indices, batch_size, regression, device):
    import torch

    for start in range(0, len(indices), batch_size):
        chosen = indices[start:start + batch_size]
        batch = tokenizer.pad([features[i] for i in chosen], return_tensors="pt")
        target = torch.tensor([labels[i] for i in chosen], dtype=torch.float if regression else torch.long)
        yield {key: value.to(device) for key, value in batch.items()}, target.to(device)


def _predict(model, tokenizer, features, labels, settings: Settings, regression: bool, device) -> list[float]:
    import torch

    model.eval()
    predictions: list[float] = []
    with torch.no_grad():
        for batch, _ in _batches(tokenizer, features, labels, list(range(len(features))),
                                 settings.eval_batch_size, regression, device):
            logits = model(**batch).logits.float()
            predictions += logits[:, 0].tolist() if regression else logits.argmax(-1).tolist()
    model.train()
    return predictions


def _evaluate(task, model, tokenizer, validation, settings, device) -> dict[str, float]:
    """``{"score": ...}`` and, for MNLI, ``matched`` and ``mismatched`` too."""
    regression = task.num_labels == 1
    all_predictions, all_labels, result = [], [], {}
    for split, (features, labels) in validation.items():
        predictions = _predict(model, tokenizer, features, labels, settings, regression, device)
        all_predictions += predictions
        all_labels += labels
        if len(validation) > 1:
            result[split.removeprefix("validation_")] = score(task.metric, predictions, labels)
    result["score"] = score(task.metric, all_predictions, all_labels)
    return result


def finetune(model_path: str, task: GlueTask, data: dict[str, Examples], seed: int, settings: Settings,
             device: str, progress_position: int = 0) -> dict[str, Any]:
    """Fine-tune one fresh copy of the encoder on one task; returns the per-epoch and best scores."""
    import torch
    import torch.nn.functional as F
    import transformers
    from tqdm.auto import tqdm

    transformers.set_seed(seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # "newly initialized weights": the classifier, expected
    transformers.logging.disable_progress_bar()  # one bar per task and seed is ours
    try:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=task.num_labels,
            problem_type="regression" if task.num_labels == 1 else "single_label_classification",
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).train()
    max_length = min(settings.max_length, getattr(model.config, "max_position_embeddings", None) or settings.max_length)
    regression = task.num_labels == 1

    train = data["train"].head(settings.limit)
    features = _encode(tokenizer, train, max_length)
    validation = {}
    for split, _ in task.validation_splits:
        examples = data[split].head(settings.limit)
        validation[split] = (_encode(tokenizer, examples, max_length), examples.labels)

    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
    )
    steps_per_epoch = math.ceil(len(features) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    scheduler = transformers.get_constant_schedule_with_warmup(optimizer, int(settings.warmup_ratio * total_steps))
    generator = torch.Generator().manual_seed(seed)

    epochs, started = [], time.monotonic()
    bar = tqdm(total=total_steps, desc=f"{task.name} seed {seed}", unit="step", leave=False,
               position=progress_position, disable=None, dynamic_ncols=True)
    for epoch in range(1, settings.epochs + 1):
        order = torch.randperm(len(features), generator=generator).tolist()
        losses = []
        for batch, target in _batches(tokenizer, features, train.labels, order, settings.batch_size,
                                      regression, device):
            logits = model(**batch).logits.float()
            if regression:
                loss = F.mse_loss(logits[:, 0], target)
            elif settings.balanced_ce:
                loss = balanced_cross_entropy(logits, target)
            else:
                loss = F.cross_entropy(logits, target)
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}")
        result = {"epoch": epoch, "train_loss": statistics.fmean(losses) if losses else float("nan")}
        result.update(_evaluate(task, model, tokenizer, validation, settings, device))
        epochs.append(result)
        bar.set_postfix(epoch=epoch, val=f"{result['score']:.2f}")
    bar.close()
    best = max(epochs, key=lambda record: record["score"])  # the first best epoch on ties
    return {
        "seed": seed, "best_epoch": best["epoch"], "score": best["score"],
        **{key: best[key] for key in ("matched", "mismatched") if key in best},
        "epochs": epochs, "train_examples": len(features),
        "seconds": time.monotonic() - started,
    }
