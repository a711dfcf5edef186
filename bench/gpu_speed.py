"""GPU speed and memory: train.py's training recipe against a vanilla one, on DeBERTa-large shapes.

Random-init DeBERTa-large (microsoft/deberta-large's config, written out below: speed and memory do not
depend on the weights) is trained on windows with the real Task 7 train length distribution, twice in one
process: with train.py's settings (its own train() loop, imported, not copied) and with a vanilla recipe
(eager fp32, every batch padded to MAX_LENGTH, no length grouping, unfused AdamW). Prints seconds per
epoch, the full run estimated for train.EPOCHS epochs, peak GiB and the speed-up; writes JSON to --json,
else to $OUT/gpu_speed.json when $OUT is set.

Usage: python bench/gpu_speed.py [--epochs 2] [--data DIR] [--json PATH]
       python bench/gpu_speed.py --tiny     # CPU-capable smoke run of every code path, toy model size
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import AutoTokenizer, DebertaConfig, DebertaForTokenClassification, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import runtime
import train  # the repository root is on the path only from here on
from prepare import DATA_DIR, load_labels, load_split

# microsoft/deberta-large's config.json, written out (the hub is not reachable from every machine).
DEBERTA_LARGE = {
    "vocab_size": 50265,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 0,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-7,
    "relative_attention": True,
    "max_relative_positions": -1,
    "pad_token_id": 0,
    "position_biased_input": False,
    "pos_att_type": ["c2p", "p2c"],
    "pooler_dropout": 0,
    "pooler_hidden_act": "gelu",
    "pooler_hidden_size": 1024,
}
TINY = {
    **DEBERTA_LARGE,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "pooler_hidden_size": 64,
}
# Sub-tokens per word when the DeBERTa tokenizer is not cached: its BPE gives 26 sub-tokens per Task 7
# train row on average for 20.45 words (measured with the real tokenizer on Task 7 train).
SUBWORDS_PER_WORD = 26 / 20.45
CLS_ID, SEP_ID, PAD_ID = 1, 2, 0  # DeBERTa v1 vocabulary
# Everything train.py's recipe does differently, switched off.
VANILLA = {
    "PRECISION": "fp32",
    "DYNAMIC_PADDING": False,
    "LENGTH_GROUPED": False,
    "FUSED_ADAMW": False,
    "GRADIENT_CHECKPOINTING": False,
}


def padding_tokenizer() -> PreTrainedTokenizerFast:
    """A real tokenizer that only pads, with DeBERTa v1's pad id: train.py's collator pads with it, and the
    windows here are synthetic ids (the DeBERTa tokenizer need not be cached)."""
    vocabulary = Tokenizer(WordLevel({"[PAD]": PAD_ID, "[UNK]": 3}, unk_token="[UNK]"))
    return PreTrainedTokenizerFast(tokenizer_object=vocabulary, pad_token="[PAD]")


def subtoken_lengths(rows: list[dict]) -> tuple[list[int], str]:
    """Sub-tokens per train row: the real DeBERTa tokenizer when cached, else the documented ratio."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            "microsoft/deberta-large", local_files_only=True, add_prefix_space=True
        )
    except OSError:
        return [
            max(1, round(len(row["tokens"]) * SUBWORDS_PER_WORD)) for row in rows
        ], f"{SUBWORDS_PER_WORD:.3f} sub-tokens per word (tokenizer not cached)"
    encoding = tokenizer([row["tokens"] for row in rows], is_split_into_words=True, add_special_tokens=False)
    return [len(ids) for ids in encoding["input_ids"]], "microsoft/deberta-large tokenizer"


def synthetic_windows(lengths: list[int], num_labels: int, vocab_size: int) -> list[dict]:
    """Windows shaped like train.py's (same MAX_LENGTH / WINDOW_OVERLAP cut), random ids and labels."""
    rng = random.Random(0)
    windows = []
    for length in lengths:
        for start, end in train.window_bounds(length, train.MAX_LENGTH - 2, train.WINDOW_OVERLAP):
            ids = [rng.randrange(3, vocab_size) for _ in range(end - start)]
            labels = [
                rng.randrange(num_labels) if rng.random() < 1 / SUBWORDS_PER_WORD else -100 for _ in ids
            ]
            windows.append({"input_ids": [CLS_ID, *ids, SEP_ID], "labels": [-100, *labels, -100]})
    return windows


def time_recipe(
    name: str,
    overrides: dict,
    config: dict,
    windows: list[dict],
    num_labels: int,
    device: torch.device,
    epochs: int,
) -> dict:
    """Train a fresh random model with train.train() under `overrides`; timings and peak memory."""
    saved = {key: getattr(train, key) for key in overrides}
    try:
        for key, value in overrides.items():
            setattr(train, key, value)
        torch.manual_seed(0)
        model = DebertaForTokenClassification(DebertaConfig(**config, num_labels=num_labels))
        runtime.patch_deberta_autocast()
        if train.GRADIENT_CHECKPOINTING:
            model.gradient_checkpointing_enable()
        model.to(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        print(
            f"== {name}: "
            + ", ".join(
                f"{k}={getattr(train, k)}"
                for k in (
                    "PRECISION",
                    "DYNAMIC_PADDING",
                    "LENGTH_GROUPED",
                    "FUSED_ADAMW",
                    "GRADIENT_CHECKPOINTING",
                    "BATCH_SIZE",
                    "MAX_LENGTH",
                )
            ),
            flush=True,
        )
        task = train.Task("target", windows, None, train.LEARNING_RATE, epochs)
        stats = train.train(model, [task], device, padding_tokenizer(), seed=0, deadline=runtime.Deadline(0, 0))
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
        del model
    finally:
        for key, value in saved.items():
            setattr(train, key, value)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    seconds = task.epoch_seconds
    steady = sum(seconds[1:]) / len(seconds[1:]) if len(seconds) > 1 else seconds[0]  # epoch 1 warms up
    steps_per_epoch = stats["steps"] / len(seconds)
    return {
        "epoch_seconds": seconds,
        "s_per_epoch": steady,
        "ms_per_step": 1000 * steady / steps_per_epoch,
        "full_run_s": seconds[0] + (train.EPOCHS - 1) * steady,
        "peak_gib": peak,
        "final_loss": task.epoch_losses[-1],
        "overrides": overrides,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed per recipe (the first warms up)")
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="prepared data folder (train.jsonl)")
    parser.add_argument("--json", type=Path, help="where to write the results (default $OUT/gpu_speed.json)")
    parser.add_argument("--tiny", action="store_true", help="toy model and 64 rows: a smoke run, CPU is fine")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.tiny:
        print(
            "error: gpu_speed.py needs a CUDA GPU and found none (use --tiny for a CPU smoke run)",
            file=sys.stderr,
        )
        return 2
    config = TINY if args.tiny else DEBERTA_LARGE
    rows = load_split("train", args.data)[: 64 if args.tiny else None]
    lengths, length_source = subtoken_lengths(rows)
    num_labels = len(load_labels(args.data))
    windows = synthetic_windows(lengths, num_labels, config["vocab_size"])
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"{device_name}; {len(rows)} rows -> {len(windows)} windows, mean {sum(lengths) / len(lengths):.1f} "
        f"/ max {max(lengths)} sub-tokens ({length_source}); batch {train.BATCH_SIZE}",
        flush=True,
    )

    recipes = {"train.py": {}, "vanilla fp32": VANILLA}
    results = {
        name: time_recipe(name, overrides, config, windows, num_labels, device, args.epochs)
        for name, overrides in recipes.items()
    }
    speedup = results["vanilla fp32"]["full_run_s"] / results["train.py"]["full_run_s"]

    print(f"\n| recipe | s / epoch | ms / step | {train.EPOCHS} epochs (est.) | peak GiB |")
    print("|---|---|---|---|---|")
    for name, result in results.items():
        print(
            f"| {name} | {result['s_per_epoch']:.2f} | {result['ms_per_step']:.1f} | "
            f"{result['full_run_s']:.1f} s | {result['peak_gib']:.2f} |"
        )
    print(f"speed-up (full run, vanilla / train.py): {speedup:.2f}x")

    report = {
        "device": device_name,
        "model": "deberta-large config, random init" if not args.tiny else "tiny",
        "rows": len(rows),
        "windows": len(windows),
        "length_source": length_source,
        "epochs_timed": args.epochs,
        "full_run_epochs": train.EPOCHS,
        "recipes": results,
        "speedup": speedup,
    }
    path = args.json or (Path(os.environ["OUT"]) / "gpu_speed.json" if os.environ.get("OUT") else None)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
