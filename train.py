"""Fine-tune a transformer encoder as a BIO tagger, predict val / holdout / test, print a `---` summary.

The one file the research agent edits: the config block holds every research knob; then checks, labels and
decoding, windows, model, training, prediction. The command line, device, model loading, precision, deadline
and summary are runtime.py's; data helpers prepare.py's, scores evaluate.py's (fixed files).

Usage: python train.py [--out DIR] [--seed N] [--data DIR] [--device D] [--limit N] [--fold K] [--deadline T]
       python train.py --check     the config block against the data, then exit
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import unicodedata
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    get_scheduler,
)

from evaluate import spans
from prepare import (
    aux_names,
    load_aux,
    load_entity_types,
    load_labels,
    load_split,
)
from runtime import (
    ABOVE_0,
    AT_LEAST_0,
    FRACTION,
    UNIT_INTERVAL,
    ConfigError,
    Deadline,
    autocast,
    begin_run,
    check_mapping,
    check_plain,
    compute_dtype,
    is_number,
    load_pretrained,
    run_summary,
    splits_to_predict,
    write_outputs,
)
from runtime import main as run_main

# ----- Config (the research agent edits these) -----
# Research knobs first, then decoding and post-processing, then switches that change only speed and memory.

# Model and input
MODEL_NAME = "microsoft/deberta-large"  # HF hub id or local folder; "minilm" = the small bundled encoder
MAX_LENGTH = 192  # sub-tokens per window, [CLS] and [SEP] included
WINDOW_OVERLAP = 64  # sub-tokens shared by neighbouring windows of a long row
# Optimisation
LEARNING_RATE = 1e-5  # peak AdamW learning rate
EPOCHS = 10  # passes over the training windows
BATCH_SIZE = 8  # windows per forward/backward pass
GRAD_ACCUM = 1  # forward/backward passes per optimizer step
WARMUP_RATIO = 0.1  # share of optimizer steps spent in linear warm-up
SCHEDULE = "cosine"  # learning rate after warm-up: cosine | linear | constant
# Label scheme and loss
LABEL_SCHEME = "BIO"  # BIO = learn B-/I- tags; IO = learn I- tags only, decoded back to valid BIO
LABEL_SMOOTHING = 0.0  # cross-entropy label smoothing; 0 = off
CLASS_WEIGHTS = {}  # label -> cross-entropy weight, e.g. {"O": 0.5}; {} = uniform
# Regularisation
WEIGHT_DECAY = 0.01  # AdamW weight decay (not applied to biases and LayerNorm weights)
MAX_GRAD_NORM = 1.0  # gradient-norm clipping; 0 = off
# Transfer from auxiliary NER sets (prepared with `prepare.py --aux NAME=SOURCE`)
AUX_DATASETS = []  # names of prepared sets under DATA/aux/, e.g. ["ncbi"]; [] = no transfer
AUX_EPOCHS = 1  # passes over each auxiliary set's windows
AUX_LR = 5e-5  # peak learning rate of the optimizer steps on auxiliary batches
TRANSFER_MODE = "sequential"  # sequential (aux first, then target on a fresh head) | mixed (interleaved)

# Decoding and post-processing
THRESHOLDS = {}  # entity type -> min probability (B+I) to tag a word with it; {} = argmax
BOUNDARY_TRIM = False  # strip TRIM_LEADING_WORDS and trailing punctuation from predicted spans
TRIM_LEADING_WORDS = ["a", "an", "the"]  # lower-cased words BOUNDARY_TRIM removes from span starts
MC_DROPOUT_PASSES = 0  # extra dropout-on prediction passes averaged in; 0 = off
MC_DROPOUT_WEIGHT = 0.5  # weight of the MC-dropout mean against the deterministic pass

# Speed and memory switches (they set what a run costs, not what it tries)
PRECISION = "bf16"  # CUDA autocast compute dtype: bf16 | fp16 | fp32 (master weights stay fp32)
LENGTH_GROUPED = True  # batch windows of similar length together (less padding)
DYNAMIC_PADDING = True  # pad each batch to its longest window; False = pad every batch to MAX_LENGTH
FUSED_ADAMW = True  # use the fused AdamW kernel on CUDA
GRADIENT_CHECKPOINTING = False  # recompute activations in backward: less memory, ~30% slower
EVAL_BATCH_SIZE = 32  # windows per prediction batch


# ----- Checks -----


def check_config(bio_labels: list[str], entity_types: list[str], aux_available: list[str]) -> None:
    """Fail in one line, before any time is spent, on settings that cannot work with this data; the line
    names every bad setting at once."""
    problems = check_plain(
        globals(),
        choices={
            "SCHEDULE": ("cosine", "linear", "constant"),
            "PRECISION": ("bf16", "fp16", "fp32"),
            "LABEL_SCHEME": ("BIO", "IO"),
            "TRANSFER_MODE": ("sequential", "mixed"),
        },
        whole_numbers={"EPOCHS": 1, "BATCH_SIZE": 1, "GRAD_ACCUM": 1, "MAX_LENGTH": 3, "AUX_EPOCHS": 1,
                       "MC_DROPOUT_PASSES": 0, "EVAL_BATCH_SIZE": 1},
        bounds={
            "LEARNING_RATE": ABOVE_0,
            "AUX_LR": ABOVE_0,
            "WARMUP_RATIO": FRACTION,
            "LABEL_SMOOTHING": FRACTION,
            "WEIGHT_DECAY": AT_LEAST_0,
            "MAX_GRAD_NORM": AT_LEAST_0,
            "MC_DROPOUT_WEIGHT": UNIT_INTERVAL,
        },
        flags=("BOUNDARY_TRIM", "LENGTH_GROUPED", "DYNAMIC_PADDING", "FUSED_ADAMW", "GRADIENT_CHECKPOINTING"),
    )
    length_ok = is_number(MAX_LENGTH) and MAX_LENGTH == int(MAX_LENGTH)
    if not isinstance(WINDOW_OVERLAP, int) or (length_ok and not 0 <= WINDOW_OVERLAP < MAX_LENGTH - 2):
        problems.append(f"WINDOW_OVERLAP must be in [0, MAX_LENGTH - 2), not {WINDOW_OVERLAP!r}")
    if not isinstance(MODEL_NAME, str) or not MODEL_NAME:
        problems.append(f"MODEL_NAME must be a hub id, a folder or 'minilm', not {MODEL_NAME!r}")
    if not isinstance(TRIM_LEADING_WORDS, list) or not all(isinstance(w, str) for w in TRIM_LEADING_WORDS):
        problems.append(f"TRIM_LEADING_WORDS must be a list of strings, not {TRIM_LEADING_WORDS!r}")

    labels = scheme_labels(bio_labels, LABEL_SCHEME if LABEL_SCHEME in ("BIO", "IO") else "BIO")
    problems += check_mapping("CLASS_WEIGHTS", CLASS_WEIGHTS, labels, "label", "weights", AT_LEAST_0)
    problems += check_mapping("THRESHOLDS", THRESHOLDS, entity_types, "entity type", "probabilities", UNIT_INTERVAL)
    if not isinstance(AUX_DATASETS, list) or not all(isinstance(name, str) for name in AUX_DATASETS):
        problems.append(f"AUX_DATASETS must be a list of names, not {AUX_DATASETS!r}")
    names = AUX_DATASETS if isinstance(AUX_DATASETS, list) else []
    unknown = [name for name in names if name not in aux_available]
    if unknown:
        available = ", ".join(aux_available) or "none; prepare one with `prepare.py --aux NAME=SOURCE`"
        problems.append(f"AUX_DATASETS: {unknown} not prepared in the data folder (prepared: {available})")
    if len(set(map(str, names))) != len(names):
        problems.append(f"AUX_DATASETS names a set twice: {AUX_DATASETS}")
    if problems:
        raise ConfigError("; ".join(problems))


# ----- Labels and decoding (pure functions) -----


def scheme_labels(labels: list[str], scheme: str) -> list[str]:
    """The labels the model learns: the BIO list itself, or "O" plus the I- labels for IO."""
    if scheme == "BIO":
        return list(labels)
    if scheme == "IO":
        return [label for label in labels if label == "O" or label.startswith("I-")]
    raise ConfigError(f"LABEL_SCHEME must be 'BIO' or 'IO', not {scheme!r}")


def to_io(tags: list[str]) -> list[str]:
    """BIO -> IO: every B-T becomes I-T (lossless unless two spans of one type touch)."""
    return ["I-" + tag[2:] if tag.startswith("B-") else tag for tag in tags]


def in_scheme(rows: list[dict]) -> list[dict]:
    """Training rows with their tags in LABEL_SCHEME."""
    return [{**row, "tags": to_io(row["tags"])} for row in rows] if LABEL_SCHEME == "IO" else rows


def to_valid_bio(tags: list[str]) -> list[str]:
    """An I-T that does not continue a T span becomes B-T; spans read the same, conlleval-style."""
    out: list[str] = []
    for tag in tags:
        if tag.startswith("I-") and (not out or out[-1][2:] != tag[2:]):  # "O"[2:] is ""
            tag = "B-" + tag[2:]
        out.append(tag)
    return out


def choose_tags(probs: np.ndarray, labels: list[str], thresholds: dict[str, float]) -> list[str]:
    """One raw tag per word. A type with a threshold is chosen when its B+I probability reaches it,
    a type without one when it holds the argmax label; of several candidates the most probable wins."""
    types = sorted({label[2:] for label in labels if label != "O"})
    columns = {t: [i for i, label in enumerate(labels) if label[2:] == t] for t in types}
    tags = []
    for word_probs in probs:
        argmax_type = labels[int(word_probs.argmax())][2:]
        mass = {t: float(word_probs[columns[t]].sum()) for t in types}
        eligible = [t for t in types if (mass[t] >= thresholds[t] if t in thresholds else t == argmax_type)]
        if not eligible:
            tags.append("O")
            continue
        best_type = max(eligible, key=mass.get)
        tags.append(labels[max(columns[best_type], key=lambda i: word_probs[i])])
    return tags


def fill_unpredicted(tags: list[str], predicted: list[bool]) -> list[str]:
    """Words with no sub-token (zero-width characters, '') get I-T inside a T span that goes on, else O."""
    out = list(tags)
    for i, has_prediction in enumerate(predicted):
        if has_prediction:
            continue
        before = out[i - 1] if i else "O"
        after = next((tags[j] for j in range(i + 1, len(tags)) if predicted[j]), "O")
        out[i] = "I-" + before[2:] if before != "O" and after == "I-" + before[2:] else "O"
    return out


def is_punctuation(token: str) -> bool:
    return bool(token) and all(unicodedata.category(char).startswith("P") for char in token)


def trim_boundaries(tokens: list[str], tags: list[str]) -> list[str]:
    """Drop leading articles and trailing punctuation from every span of valid BIO tags."""
    out = list(tags)
    for span_type, start, end in spans(tags):
        while start < end and tokens[start].lower() in TRIM_LEADING_WORDS:
            out[start] = "O"
            start += 1
        while start < end and is_punctuation(tokens[end - 1]):
            out[end - 1] = "O"
            end -= 1
        if start < end:
            out[start] = "B-" + span_type
    return out


def decode_row(tokens: list[str], probs: np.ndarray, predicted: list[bool], labels: list[str]) -> list[str]:
    """Word probabilities -> valid BIO tags, one per token, with the configured post-processing."""
    tags = fill_unpredicted(choose_tags(probs, labels, THRESHOLDS), predicted)
    tags = to_valid_bio(tags)
    return trim_boundaries(tokens, tags) if BOUNDARY_TRIM else tags


# ----- Tokenization and windows -----


def window_bounds(length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) ranges of at most `size` covering 0..length; neighbours share >= `overlap` items."""
    # Not the tokenizer's stride: its last window is a short leftover; this one ends flush, full size.
    if length <= size:
        return [(0, length)] if length else []
    starts = list(range(0, length - size, size - overlap)) + [length - size]
    return [(start, start + size) for start in starts]


def encode_rows(tokenizer, rows: list[dict], label_ids: dict[str, int] | None = None) -> list[dict]:
    """Tokenize each row's words once and cut it into MAX_LENGTH windows.

    A window is {"row", "start", "input_ids", "word_index", "labels"}: word_index holds the word of each
    first sub-token (-1 elsewhere); labels (when label_ids is given) put the word's label on its first
    sub-token and -100 on the rest. Words with no sub-token appear in no window."""
    nonempty = [i for i, row in enumerate(rows) if row["tokens"]]
    if not nonempty:
        return []
    words = [rows[i]["tokens"] for i in nonempty]
    encoding = tokenizer(words, is_split_into_words=True, add_special_tokens=False, verbose=False)
    windows = []
    for batch_index, row_index in enumerate(nonempty):
        ids, word_ids = encoding["input_ids"][batch_index], encoding.word_ids(batch_index)
        first = [
            w if w is not None and (k == 0 or word_ids[k - 1] != w) else -1 for k, w in enumerate(word_ids)
        ]
        for start, end in window_bounds(len(ids), MAX_LENGTH - 2, WINDOW_OVERLAP):
            window = {
                "row": row_index,
                "start": start,
                "input_ids": [tokenizer.cls_token_id, *ids[start:end], tokenizer.sep_token_id],
                "word_index": [-1, *first[start:end], -1],
            }
            if label_ids is not None:
                tags = rows[row_index]["tags"]
                window["labels"] = [label_ids[tags[w]] if w >= 0 else -100 for w in window["word_index"]]
            windows.append(window)
    return windows


def merge_windows(num_words: int, num_labels: int, windows: list[dict], window_probs: list[np.ndarray]):
    """Per word, the probabilities from the window where its first sub-token lies farthest from an edge
    (ties: the earliest window). Returns (probs [num_words, num_labels], predicted: list[bool])."""
    merged = np.zeros((num_words, num_labels), dtype=np.float32)
    best_margin = np.full(num_words, -1)
    for window, probs in sorted(zip(windows, window_probs), key=lambda pair: pair[0]["start"]):
        last = len(window["word_index"]) - 1
        for position, word in enumerate(window["word_index"]):
            margin = min(position, last - position)
            if word >= 0 and margin > best_margin[word]:
                best_margin[word], merged[word] = margin, probs[position]
    return merged, (best_margin >= 0).tolist()


# ----- Model -----


def load_model(name: str, labels: list[str]):
    """The tokenizer and a token-classification model with fp32 weights and a fresh head for `labels`."""
    tokenizer, model = load_pretrained(name, AutoTokenizer, AutoModelForTokenClassification, labels)
    if GRADIENT_CHECKPOINTING:
        model.gradient_checkpointing_enable()
    return tokenizer, model


def new_head(model, num_labels: int) -> torch.nn.Linear:
    """A fresh label head shaped like the model's `classifier`, initialised as transformers does."""
    head = torch.nn.Linear(model.classifier.in_features, num_labels)
    head.weight.data.normal_(0.0, getattr(model.config, "initializer_range", 0.02))
    head.bias.data.zero_()
    return head


# ----- Training -----


@dataclass
class Task:
    """One data set trained in a phase: windows, label head, loss weights, learning rate, epochs. Transfer
    trains several through one encoder, each with its own head (swapped in as `classifier`)."""

    name: str  # "target", or "aux <name>"
    windows: list[dict]
    head: torch.nn.Module | None  # None: the model's own head, never swapped (no transfer)
    lr: float
    epochs: int
    weights: torch.Tensor | None = None
    seen: int = 0  # windows trained on so far
    epoch_losses: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)

    @property
    def epochs_done(self) -> float:
        return self.seen / len(self.windows) if self.windows else 0.0


def make_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of indices; with LENGTH_GROUPED, similar lengths share a batch."""
    # Not LengthGroupedSampler: it draws from torch's generator, longest first, so a seed gives other batches.
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if LENGTH_GROUPED:  # sort within chunks of 50 batches, then shuffle the batches
        chunk = batch_size * 50
        order = [
            i
            for k in range(0, len(order), chunk)
            for i in sorted(order[k : k + chunk], key=lengths.__getitem__)
        ]
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    if LENGTH_GROUPED:
        rng.shuffle(batches)
    return batches


def plan_steps(tasks: list[Task], rng: random.Random) -> list[tuple[Task, int, list[list[int]], bool]]:
    """The phase's optimizer steps in order: (task, epoch, up to GRAD_ACCUM batches, ends the epoch).
    A step holds batches of one task; the tasks' steps are interleaved at random, each task's in order."""
    queues = []
    for task in tasks:
        lengths = [len(window["input_ids"]) for window in task.windows]
        steps = []
        for epoch in range(task.epochs):
            batches = make_batches(lengths, BATCH_SIZE, rng)
            for k in range(0, len(batches), GRAD_ACCUM):
                steps.append((task, epoch, batches[k : k + GRAD_ACCUM], k + GRAD_ACCUM >= len(batches)))
        queues.append(steps)
    order = [index for index, steps in enumerate(queues) for _ in steps]
    if len(queues) > 1:
        rng.shuffle(order)
    iterators = [iter(steps) for steps in queues]
    return [next(iterators[index]) for index in order]


def padded_width(windows: list[dict]) -> int:
    return max(len(w["input_ids"]) for w in windows) if DYNAMIC_PADDING else MAX_LENGTH


def collate(windows: list[dict], tokenizer, device: torch.device) -> dict:
    """Windows padded into tensors on `device` (labels only when the windows have them)."""
    padding = "longest" if DYNAMIC_PADDING else "max_length"
    collator = DataCollatorForTokenClassification(tokenizer, padding=padding, max_length=MAX_LENGTH)
    batch = collator([{key: w[key] for key in ("input_ids", "labels") if key in w} for w in windows])
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def make_optimizer(params: list[torch.nn.Parameter], device: torch.device) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and norm weights (1-D tensors)."""
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=LEARNING_RATE, fused=FUSED_ADAMW and device.type == "cuda")


def class_weights(labels: list[str], device: torch.device) -> torch.Tensor | None:
    """CLASS_WEIGHTS as a per-label tensor (1.0 for labels it does not name); None when empty."""
    if not CLASS_WEIGHTS:
        return None
    return torch.tensor([float(CLASS_WEIGHTS.get(label, 1.0)) for label in labels], device=device)


def token_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy over first sub-tokens (label -100 elsewhere), computed in fp32."""
    logits, labels = logits.float().flatten(0, 1), labels.flatten()
    return F.cross_entropy(logits, labels, weight=weights, ignore_index=-100, label_smoothing=LABEL_SMOOTHING)


def train(model, tasks: list[Task], device: torch.device, tokenizer, seed: int, deadline: Deadline) -> dict:
    """One phase: the tasks' steps interleaved under one optimizer and schedule, each at its task's peak
    learning rate times the schedule; stops early when the deadline needs the time. Returns step counts."""
    rng = random.Random(seed)
    plan = plan_steps(tasks, rng)
    heads = [task.head for task in tasks if task.head is not None]
    # Each parameter once: a task's head may also be the model's current classifier.
    params = list({id(p): p for module in [model, *heads] for p in module.parameters()}.values())
    optimizer = make_optimizer(params, device)
    schedule = "constant_with_warmup" if SCHEDULE == "constant" else SCHEDULE
    lr_factor = get_scheduler(
        schedule,
        optimizer,
        num_warmup_steps=int(WARMUP_RATIO * len(plan)),
        num_training_steps=max(1, len(plan)),
    ).lr_lambdas[0]
    scaler = torch.amp.GradScaler(device.type, enabled=compute_dtype(device, PRECISION) == torch.float16)
    loss_sums = {task.name: torch.zeros((), device=device) for task in tasks}
    batch_counts = dict.fromkeys(loss_sums, 0)
    epoch_starts = dict.fromkeys(loss_sums, time.perf_counter())
    model.train()
    steps, stopped = 0, False
    sync = torch.cuda.synchronize if device.type == "cuda" and deadline.at else lambda: None  # honest timings
    for task, epoch, batches, ends_epoch in plan:
        if deadline.should_stop():
            stopped = True
            break
        windows = [[task.windows[j] for j in batch] for batch in batches]
        step_start = time.perf_counter()
        if task.head is not None and model.classifier is not task.head:
            model.classifier = task.head
        for batch_windows in windows:
            batch = collate(batch_windows, tokenizer, device)
            with autocast(device, PRECISION):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = token_loss(logits, batch["labels"], task.weights)
            scaler.scale(loss / len(windows)).backward()
            loss_sums[task.name] += loss.detach()
            batch_counts[task.name] += 1
            task.seen += len(batch_windows)
        sync()
        pass_seconds = time.perf_counter() - step_start
        scaler.unscale_(optimizer)
        if MAX_GRAD_NORM > 0:
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        for group in optimizer.param_groups:
            group["lr"] = task.lr * lr_factor(steps)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        steps += 1
        sync()
        tokens = sum(padded_width(batch) * len(batch) for batch in windows)
        deadline.record(time.perf_counter() - step_start, pass_seconds, tokens)
        if ends_epoch:
            if device.type == "cuda":
                torch.cuda.synchronize()  # honest epoch timings
            task.epoch_seconds.append(time.perf_counter() - epoch_starts[task.name])
            task.epoch_losses.append(loss_sums[task.name].item() / max(1, batch_counts[task.name]))
            loss_sums[task.name].zero_()
            batch_counts[task.name], epoch_starts[task.name] = 0, time.perf_counter()
            prefix = "" if task.name == "target" else f"{task.name}: "
            print(
                f"{prefix}epoch {epoch + 1}/{task.epochs}  loss {task.epoch_losses[-1]:.4f}  "
                f"{task.epoch_seconds[-1]:.1f} s",
                flush=True,
            )
    if stopped:
        deadline.report(", ".join(task.name for task in tasks), steps, len(plan))
    return {"steps": steps, "planned_steps": len(plan), "stopped_by_deadline": stopped}


# ----- Prediction -----


def forward_probs(model, batch: dict, device: torch.device) -> torch.Tensor:
    with autocast(device, PRECISION):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits.float().softmax(-1)


def prediction_batches(windows: list[dict]) -> list[list[int]]:
    """Window indices in prediction batches: sorted by length, EVAL_BATCH_SIZE at a time."""
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]["input_ids"]))
    return [order[k : k + EVAL_BATCH_SIZE] for k in range(0, len(order), EVAL_BATCH_SIZE)]


def prediction_tokens(windows: list[dict]) -> int:
    """Padded sub-tokens that predicting these windows runs through the model (MC-dropout passes included)."""
    tokens = sum(
        padded_width([windows[i] for i in chunk]) * len(chunk) for chunk in prediction_batches(windows)
    )
    return tokens * (1 + MC_DROPOUT_PASSES)


@torch.no_grad()
def predict_window_probs(model, windows: list[dict], device: torch.device, tokenizer) -> list[np.ndarray]:
    """Softmax probabilities [window length, labels] per window, with optional MC-dropout blending."""
    result: list[np.ndarray] = [np.empty(0)] * len(windows)
    for chunk in prediction_batches(windows):
        batch = collate([windows[i] for i in chunk], tokenizer, device)
        model.eval()
        probs = forward_probs(model, batch, device)
        if MC_DROPOUT_PASSES > 0:
            model.train()  # dropout on
            sampled = sum(forward_probs(model, batch, device) for _ in range(MC_DROPOUT_PASSES))
            probs = (1 - MC_DROPOUT_WEIGHT) * probs + MC_DROPOUT_WEIGHT * sampled / MC_DROPOUT_PASSES
            model.eval()
        probs = probs.cpu().numpy()
        for row, i in enumerate(chunk):
            result[i] = probs[row, : len(windows[i]["input_ids"])]
    return result


def predict_rows(
    model,
    tokenizer,
    rows: list[dict],
    labels: list[str],
    device: torch.device,
    windows: list[dict] | None = None,
) -> list[list[str]]:
    """Valid BIO tags for every row, one per input token, however long the row; `windows` saves encoding
    the rows again (encode_rows(rows))."""
    windows = encode_rows(tokenizer, rows) if windows is None else windows
    window_probs = predict_window_probs(model, windows, device, tokenizer)
    by_row: dict[int, list[int]] = {}
    for i, window in enumerate(windows):
        by_row.setdefault(window["row"], []).append(i)
    predictions = []
    for row_index, row in enumerate(rows):
        mine = by_row.get(row_index, [])
        probs, predicted = merge_windows(
            len(row["tokens"]), len(labels), [windows[i] for i in mine], [window_probs[i] for i in mine]
        )
        predictions.append(decode_row(row["tokens"], probs, predicted, labels))
    return predictions


# ----- Main -----


def run(args: argparse.Namespace) -> dict:
    """Train, predict, write the output files; returns the summary."""
    total_start = time.perf_counter()
    bio_labels, types = load_labels(args.data), load_entity_types(args.data)
    check_config(bio_labels, types, aux_names(args.data))
    device = begin_run(args, MODEL_NAME, PRECISION)
    labels = scheme_labels(bio_labels, LABEL_SCHEME)
    train_rows = in_scheme(load_split("train", args.data)[: args.limit])
    tokenizer, model = load_model(MODEL_NAME, labels)
    if AUX_DATASETS and not isinstance(getattr(model, "classifier", None), torch.nn.Linear):
        raise ConfigError(
            f"AUX_DATASETS: transfer swaps label heads, and {MODEL_NAME} has no linear `classifier`"
        )
    model.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    windows = encode_rows(tokenizer, train_rows, {label: i for i, label in enumerate(labels)})
    if not windows:
        raise ConfigError(f"no training windows: {len(train_rows)} train rows with tokens")
    head = model.classifier if AUX_DATASETS else None
    target = Task("target", windows, head, LEARNING_RATE, EPOCHS, class_weights(labels, device))
    aux_tasks = []
    for name in AUX_DATASETS:
        rows, aux_bio_labels = load_aux(name, args.data)
        aux_labels = scheme_labels(aux_bio_labels, LABEL_SCHEME)
        aux_windows = encode_rows(
            tokenizer, in_scheme(rows[: args.limit]), {label: i for i, label in enumerate(aux_labels)}
        )
        aux_head = new_head(model, len(aux_labels)).to(device)
        aux_tasks.append(Task(f"aux {name}", aux_windows, aux_head, AUX_LR, AUX_EPOCHS))
    phases = [[target]]
    if aux_tasks:
        phases = [aux_tasks, [target]] if TRANSFER_MODE == "sequential" else [[target, *aux_tasks]]

    # Prediction inputs are cut into windows now, so the deadline knows how much prediction is left to do.
    to_predict = splits_to_predict(args.data)
    predict_windows = {split: encode_rows(tokenizer, rows) for split, rows in to_predict.items()}
    deadline = Deadline(args.deadline, sum(prediction_tokens(w) for w in predict_windows.values()))
    num_params = sum(p.numel() for p in model.parameters())
    print(
        f"model {MODEL_NAME}: {num_params / 1e6:.1f} M parameters on {device}; "
        f"{len(train_rows)} train rows -> {len(windows)} windows"
        + "".join(f"; {task.name}: {len(task.windows)} windows" for task in aux_tasks)
        + "; predicting "
        + ", ".join(f"{split} {len(rows)} rows" for split, rows in to_predict.items()),
        flush=True,
    )

    train_start = time.perf_counter()
    phase_stats = []
    for phase in phases:
        phase_stats.append(train(model, phase, device, tokenizer, args.seed, deadline))
        if phase_stats[-1]["stopped_by_deadline"]:
            break
    if head is not None:
        model.classifier = head  # the target's head predicts
    train_seconds = time.perf_counter() - train_start
    print(f"epochs done: {target.epochs_done:.2f} of {EPOCHS}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    predict_start, predictions = time.perf_counter(), {}
    for split, rows in to_predict.items():
        tags = predict_rows(model, tokenizer, rows, labels, device, predict_windows[split])
        predictions[split] = [{**row, "tags": row_tags} for row, row_tags in zip(rows, tags)]
    estimate = f" (the deadline allowed {deadline.predict_seconds():.0f} s)" if deadline.at else ""
    print(f"prediction: {time.perf_counter() - predict_start:.1f} s{estimate}", flush=True)
    summary = run_summary(globals(), device, args, target, aux_tasks, phase_stats, model)
    summary.update(train_seconds=train_seconds, total_seconds=time.perf_counter() - total_start,
                   train_rows=len(train_rows))
    write_outputs(args.out, to_predict, predictions, summary)
    return summary


def check(args: argparse.Namespace) -> None:
    """--check: the config block against the data, no model loaded."""
    check_config(load_labels(args.data), load_entity_types(args.data), aux_names(args.data))


def main(argv=None) -> int:
    return run_main(run, check, argv)


if __name__ == "__main__":
    sys.exit(main())
