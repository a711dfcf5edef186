"""Tests for train.py: word alignment, long-row windows, BIO decoding, the DeBERTa autocast fix, the training
loop (seeding, the deadline, transfer), the command line and config checks, MiniLM runs on the real data."""

import ast
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

import prepare
import runtime
import train
from evaluate import score, spans
from research_loop.preparation import build, sources

REPO = Path(__file__).resolve().parents[1]
TYPES = ["ClinicalImpacts", "SocialImpacts"]
LABELS = ["O", "B-ClinicalImpacts", "I-ClinicalImpacts", "B-SocialImpacts", "I-SocialImpacts"]
LABEL_IDS = {label: i for i, label in enumerate(LABELS)}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(runtime.resolve_model("minilm"), add_prefix_space=True)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def is_valid_bio(tags: list[str]) -> bool:
    """Every tag is a known label and every I-T continues a T span."""
    return all(tag in LABELS for tag in tags) and train.to_valid_bio(tags) == list(tags)


# ----- Alignment -----


def test_first_subtoken_carries_the_label_and_empty_words_still_get_a_tag(tokenizer):
    tokens = ["Oxycodone", "\u200b", "", "withdrawal", "\ufe0f", "sucks"]
    tags = ["B-ClinicalImpacts", "I-ClinicalImpacts", "I-ClinicalImpacts", "I-ClinicalImpacts", "O", "O"]
    [window] = train.encode_rows(tokenizer, [{"tokens": tokens, "tags": tags}], LABEL_IDS)

    pieces = tokenizer.convert_ids_to_tokens(window["input_ids"])
    assert pieces[:3] == ["[CLS]", "ox", "##y"] and pieces[-1] == "[SEP]"
    labelled = [(pieces[k], label) for k, label in enumerate(window["labels"]) if label != -100]
    # One label per word that has sub-tokens, on its first piece; "##y" etc. carry none.
    assert labelled == [
        ("ox", LABEL_IDS["B-ClinicalImpacts"]),
        ("withdrawal", LABEL_IDS["I-ClinicalImpacts"]),
        ("sucks", LABEL_IDS["O"]),
    ]
    assert [w for w in window["word_index"] if w >= 0] == [0, 3, 5]

    # Prediction: the zero-sub-token words inside the span continue it; the one after its end is O.
    probs = np.zeros((len(window["input_ids"]), len(LABELS)), dtype=np.float32)
    for position, word in enumerate(window["word_index"]):
        if word >= 0:
            probs[position, LABEL_IDS[tags[word]]] = 1.0
    merged, predicted = train.merge_windows(len(tokens), len(LABELS), [window], [probs])
    assert predicted == [True, False, False, True, False, True]
    assert train.decode_row(tokens, merged, predicted, LABELS) == tags


def test_every_real_word_is_labelled_once_or_has_no_subtokens(tokenizer, prepared_task7):
    rows = read_jsonl(prepared_task7 / "train.jsonl")
    windows = train.encode_rows(tokenizer, rows, LABEL_IDS)
    seen = {}
    for window in windows:
        for word, label in zip(window["word_index"], window["labels"]):
            assert (word >= 0) == (label != -100)
            if word >= 0:
                seen.setdefault((window["row"], word), []).append(label)
    for row_index, row in enumerate(rows):
        for word, tag in enumerate(row["tags"]):
            has_pieces = bool(tokenizer(row["tokens"][word], add_special_tokens=False)["input_ids"])
            if has_pieces:
                assert seen[(row_index, word)] == [LABEL_IDS[tag]]
            else:
                assert (row_index, word) not in seen
    assert any(not tokenizer(t, add_special_tokens=False)["input_ids"] for r in rows for t in r["tokens"])


def test_fill_unpredicted_continues_only_spans_that_go_on():
    tags = ["B-SocialImpacts", "O", "I-SocialImpacts", "I-SocialImpacts", "O", "O"]
    predicted = [True, False, True, True, False, True]
    assert train.fill_unpredicted(tags, predicted) == [
        "B-SocialImpacts",
        "I-SocialImpacts",
        "I-SocialImpacts",
        "I-SocialImpacts",
        "O",
        "O",
    ]
    assert train.fill_unpredicted(["O", "I-SocialImpacts"], [False, True]) == ["O", "I-SocialImpacts"]


# ----- Windows -----


@pytest.mark.parametrize("length", [0, 1, 10, 11, 37, 100])
def test_window_bounds_cover_every_subtoken_with_the_overlap(length):
    bounds = train.window_bounds(length, 10, 3)
    covered = {i for start, end in bounds for i in range(start, end)}
    assert covered == set(range(length))
    assert all(end - start <= 10 for start, end in bounds)
    assert all(previous[1] - current[0] >= 3 for previous, current in itertools.pairwise(bounds))


def test_long_row_gets_one_tag_per_token_and_the_merge_is_order_independent(tokenizer, monkeypatch):
    monkeypatch.setattr(train, "MAX_LENGTH", 16)
    monkeypatch.setattr(train, "WINDOW_OVERLAP", 5)
    words = [
        "Oxycodone",
        "withdrawal",
        "made",
        "me",
        "lose",
        "my",
        "job",
        "and",
        "my",
        "girlfriend",
        "\u200b",
        "left",
        ";",
        "the",
        "cravings",
        "were",
        "unbearable",
        "for",
        "weeks",
        "afterwards",
    ] * 4
    row = {"tokens": words}
    windows = train.encode_rows(tokenizer, [row])
    assert len(windows) > 4

    # Window k predicts "label" k, so the merged value tells which window each word was read from.
    probs = [np.full((len(w["input_ids"]), 1), float(k)) for k, w in enumerate(windows)]
    merged, predicted = train.merge_windows(len(words), 1, windows, probs)
    assert predicted == [w != "\u200b" for w in words]
    for word in range(len(words)):
        margins = {
            k: min(p, len(w["word_index"]) - 1 - p)
            for k, w in enumerate(windows)
            for p, index in enumerate(w["word_index"])
            if index == word
        }
        if margins:
            assert margins[int(merged[word, 0])] == max(margins.values())  # farthest from a window edge

    rng = np.random.default_rng(0)
    probs = [rng.random((len(w["input_ids"]), len(LABELS))).astype(np.float32) for w in windows]
    tags = train.decode_row(words, *train.merge_windows(len(words), len(LABELS), windows, probs), LABELS)
    order = list(range(len(windows)))
    random.Random(1).shuffle(order)
    shuffled = train.merge_windows(
        len(words), len(LABELS), [windows[k] for k in order], [probs[k] for k in order]
    )
    assert train.decode_row(words, *shuffled, LABELS) == tags
    assert len(tags) == len(words) and is_valid_bio(tags)


# ----- Decoding -----


def test_bio_io_round_trip_keeps_the_real_val_spans(prepared_task7):
    for row in read_jsonl(prepared_task7 / "val.jsonl"):
        tags = row["tags"]
        touching = any(b.startswith("B-") and a[2:] == b[2:] for a, b in itertools.pairwise(tags))
        assert not touching  # the IO scheme's one blind spot; Task 7 gold never has it
        assert spans(train.to_valid_bio(train.to_io(tags))) == spans(tags)
    # What IO cannot express: two touching spans of one type merge into one.
    assert spans(train.to_valid_bio(train.to_io(["B-SocialImpacts", "B-SocialImpacts"]))) == [
        ("SocialImpacts", 0, 2)
    ]


def test_stray_i_tags_start_new_spans():
    tags = [
        "I-ClinicalImpacts",
        "I-ClinicalImpacts",
        "O",
        "I-SocialImpacts",
        "I-ClinicalImpacts",
        "B-SocialImpacts",
    ]
    fixed = train.to_valid_bio(tags)
    assert fixed == [
        "B-ClinicalImpacts",
        "I-ClinicalImpacts",
        "O",
        "B-SocialImpacts",
        "B-ClinicalImpacts",
        "B-SocialImpacts",
    ]
    assert spans(fixed) == spans(tags) and is_valid_bio(fixed)


def test_thresholds_turn_unsure_words_to_o_and_can_raise_recall():
    unsure = np.array([[0.30, 0.35, 0.05, 0.20, 0.10]])  # argmax B-ClinicalImpacts, type mass 0.40
    assert train.choose_tags(unsure, LABELS, {}) == ["B-ClinicalImpacts"]
    assert train.choose_tags(unsure, LABELS, {"ClinicalImpacts": 0.5}) == ["O"]
    assert train.choose_tags(unsure, LABELS, {"ClinicalImpacts": 0.39}) == ["B-ClinicalImpacts"]
    assert train.choose_tags(unsure, LABELS, {"SocialImpacts": 0.9}) == ["B-ClinicalImpacts"]
    mostly_o = np.array([[0.70, 0.02, 0.08, 0.15, 0.05]])
    assert train.choose_tags(mostly_o, LABELS, {}) == ["O"]
    assert train.choose_tags(mostly_o, LABELS, {"SocialImpacts": 0.2}) == ["B-SocialImpacts"]
    io_labels = ["O", "I-ClinicalImpacts", "I-SocialImpacts"]
    assert train.choose_tags(np.array([[0.4, 0.6, 0.0]]), io_labels, {"ClinicalImpacts": 0.7}) == ["O"]


def test_boundary_trim_strips_articles_and_trailing_punctuation(monkeypatch):
    tokens = ["I", "lost", "the", "job", "...", "and", "The", "!"]
    tags = [
        "O",
        "B-SocialImpacts",
        "I-SocialImpacts",
        "I-SocialImpacts",
        "I-SocialImpacts",
        "O",
        "B-ClinicalImpacts",
        "I-ClinicalImpacts",
    ]
    assert train.trim_boundaries(tokens, tags) == [
        "O",
        "B-SocialImpacts",
        "I-SocialImpacts",
        "I-SocialImpacts",
        "O",
        "O",
        "O",
        "O",
    ]
    leading = train.trim_boundaries(["the", "cravings", "."], ["B-ClinicalImpacts", "I-ClinicalImpacts", "O"])
    assert leading == ["O", "B-ClinicalImpacts", "O"]

    probs = np.eye(len(LABELS), dtype=np.float32)[[LABEL_IDS[t] for t in tags]]
    monkeypatch.setattr(train, "BOUNDARY_TRIM", False)
    assert train.decode_row(tokens, probs, [True] * len(tokens), LABELS) == tags
    monkeypatch.setattr(train, "BOUNDARY_TRIM", True)
    assert train.decode_row(tokens, probs, [True] * len(tokens), LABELS)[4:] == ["O"] * 4


# ----- Models -----


def test_minilm_alias_is_the_bundled_encoder():
    assert (Path(runtime.resolve_model("minilm")) / "config.json").is_file()
    assert runtime.resolve_model("microsoft/deberta-large") == "microsoft/deberta-large"


def tiny_forward_backward(model) -> torch.Tensor:
    torch.manual_seed(0)
    input_ids = torch.randint(5, 100, (2, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0  # padding exercises the masked_fill
    labels = torch.randint(0, 5, (2, 12)).masked_fill(attention_mask == 0, -100)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    loss = train.token_loss(logits, labels, None)
    loss.backward()
    return loss


def tiny_deberta_config(config_class):
    """DeBERTa-large's attention settings at toy size."""
    return config_class(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        relative_attention=True,
        pos_att_type=["c2p", "p2c"],
        max_relative_positions=-1,
        position_biased_input=False,
        type_vocab_size=0,
        num_labels=5,
    )


def test_deberta_v1_trains_under_bf16_autocast_only_with_the_fix(monkeypatch):
    from transformers import DebertaConfig, DebertaForTokenClassification
    from transformers.models.deberta import modeling_deberta

    attention = modeling_deberta.DisentangledSelfAttention
    assert not getattr(attention, "_autocast_patched", False), "patched before the test could see the bug"
    monkeypatch.setattr(
        attention, "transpose_for_scores", attention.transpose_for_scores
    )  # undone afterwards
    monkeypatch.setattr(attention, "_autocast_patched", False, raising=False)
    torch.manual_seed(0)
    model = DebertaForTokenClassification(tiny_deberta_config(DebertaConfig))
    model.eval()
    input_ids = torch.randint(5, 100, (2, 12))
    fp32_before = model(input_ids=input_ids).logits

    with pytest.raises(RuntimeError, match="overflow"):
        tiny_forward_backward(model)

    runtime.patch_deberta_autocast()
    model.zero_grad()
    loss = tiny_forward_backward(model)
    assert torch.isfinite(loss)
    q_bias = model.deberta.encoder.layer[0].attention.self.q_bias
    assert q_bias.dtype == torch.float32 and q_bias.grad is not None and torch.isfinite(q_bias.grad).all()
    assert torch.equal(model(input_ids=input_ids).logits, fp32_before)  # fp32 results unchanged


def test_deberta_v3_trains_under_bf16_autocast():
    from transformers import DebertaV2Config, DebertaV2ForTokenClassification

    torch.manual_seed(0)
    model = DebertaV2ForTokenClassification(tiny_deberta_config(DebertaV2Config))
    assert torch.isfinite(tiny_forward_backward(model))


# ----- Training loop -----


def tiny_bert(num_labels: int = len(LABELS)):
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    return BertForTokenClassification(config)


def random_windows(count: int) -> list[dict]:
    rng = random.Random(0)
    windows = []
    for _ in range(count):
        ids = [rng.randrange(5, 50) for _ in range(rng.randrange(3, 20))]
        windows.append({"input_ids": [1, *ids, 2], "labels": [-100, *(i % len(LABELS) for i in ids), -100]})
    return windows


@pytest.fixture
def one_thread():
    """Toy models run fastest on one thread, and shared CPUs do not punish it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def one_task(windows: list[dict], epochs: int, weights=None, head=None, name="target") -> train.Task:
    return train.Task(name, windows, head, train.LEARNING_RATE, epochs, weights)


NO_DEADLINE = runtime.Deadline(0, 0)


def test_training_learns_and_is_seeded(monkeypatch, one_thread, tokenizer):
    monkeypatch.setattr(train, "LEARNING_RATE", 1e-2)
    monkeypatch.setattr(train, "GRAD_ACCUM", 2)
    monkeypatch.setattr(train, "SCHEDULE", "linear")
    monkeypatch.setattr(train, "LABEL_SMOOTHING", 0.05)
    monkeypatch.setattr(train, "CLASS_WEIGHTS", {"O": 0.5})
    windows, cpu = random_windows(40), torch.device("cpu")
    weights = train.class_weights(LABELS, cpu)
    first = one_task(windows, 4, weights)
    stats = train.train(tiny_bert(), [first], cpu, tokenizer, 42, NO_DEADLINE)
    assert first.epoch_losses[-1] < 0.7 * first.epoch_losses[0]  # ids determine labels: learnable
    assert stats == {
        "steps": 4 * 3,
        "planned_steps": 4 * 3,
        "stopped_by_deadline": False,
    }  # 5 batches, 2 a step
    assert first.epochs_done == 4.0 and len(first.epoch_seconds) == 4
    again = one_task(windows, 4, weights)
    train.train(tiny_bert(), [again], cpu, tokenizer, 42, NO_DEADLINE)
    assert again.epoch_losses == first.epoch_losses
    other_seed = one_task(windows, 4, weights)
    train.train(tiny_bert(), [other_seed], cpu, tokenizer, 7, NO_DEADLINE)
    assert other_seed.epoch_losses != first.epoch_losses


def test_the_deadline_keeps_time_for_prediction():
    assert not runtime.Deadline(0, 10**12).should_stop()  # no deadline
    assert runtime.Deadline(time.time() + 3, 0).should_stop()  # inside the margin before anything ran
    deadline = runtime.Deadline(time.time() + 60, predict_tokens=1000)
    assert not deadline.should_stop()
    deadline.record(step_seconds=20.0, pass_seconds=19.0, tokens=100)  # the first step warms up: left out of
    assert not deadline.should_stop()  # the estimate, but a second step runs only if one as slow still fits
    deadline.record(step_seconds=1.5, pass_seconds=1.0, tokens=100)  # 0.01 s per padded sub-token
    assert deadline.predict_seconds() == pytest.approx(5 + 1.5 * 0.5 * 0.01 * 1000)
    assert not deadline.should_stop()
    deadline.predict_tokens = 10_000  # about 80 s of prediction no longer fits
    assert deadline.should_stop()
    slow_start = runtime.Deadline(time.time() + 20, predict_tokens=0)
    slow_start.record(step_seconds=16.0, pass_seconds=15.0, tokens=100)
    assert slow_start.should_stop()


def test_training_stops_for_the_deadline_after_a_fraction_of_an_epoch(one_thread, capsys, tokenizer):
    task = one_task(random_windows(40), 4)
    deadline = runtime.Deadline(time.time() + 60, predict_tokens=10**12)  # prediction would take forever
    stats = train.train(tiny_bert(), [task], torch.device("cpu"), tokenizer, 42, deadline)
    # The first step warms up; the second measures the speed, which says: stop.
    assert stats["stopped_by_deadline"] and stats["steps"] == 2 and stats["planned_steps"] == 20
    assert task.epochs_done == pytest.approx(16 / 40)
    assert "deadline: stopped training (target) after 2 of 20 steps" in capsys.readouterr().out


def test_plan_interleaves_tasks_and_keeps_each_tasks_order(monkeypatch):
    monkeypatch.setattr(train, "GRAD_ACCUM", 2)
    target, aux = one_task(random_windows(40), 3), one_task(random_windows(17), 2, name="aux x")
    plan = train.plan_steps([target, aux], random.Random(0))
    alone = train.plan_steps([one_task(random_windows(40), 3)], random.Random(0))
    assert [step[0].name for step in plan].count("target") == len(alone) == 3 * 3  # 5 batches of 8: 3 steps
    assert [step[0].name for step in plan].count("aux x") == 2 * 2  # 3 batches of 8: 2 steps
    names = "".join("t" if step[0] is target else "a" for step in plan)
    assert names not in ("t" * 9 + "a" * 4, "a" * 4 + "t" * 9)  # interleaved
    for task in (target, aux):
        epochs = [step[1] for step in plan if step[0] is task]
        assert epochs == sorted(epochs)
        assert sum(step[3] for step in plan if step[0] is task) == task.epochs  # one step ends each epoch
        batches = [b for step in plan if step[0] is task for b in step[2]]
        assert all(len(step[2]) <= 2 for step in plan if step[0] is task)
        per_epoch = len(batches) // task.epochs
        for epoch in range(task.epochs):
            covered = sorted(i for b in batches[epoch * per_epoch : (epoch + 1) * per_epoch] for i in b)
            assert covered == list(range(len(task.windows)))


def test_transfer_trains_each_head_on_its_own_batches(monkeypatch, one_thread, tokenizer):
    monkeypatch.setattr(train, "LEARNING_RATE", 1e-2)
    model, cpu = tiny_bert(), torch.device("cpu")
    target_head = model.classifier
    aux_head = train.new_head(model, 3)
    assert aux_head.weight.shape == (3, 32) and not aux_head.bias.any()
    aux_windows = [
        {**w, "labels": [label if label < 0 else label % 3 for label in w["labels"]]}
        for w in random_windows(16)
    ]
    aux = train.Task("aux x", aux_windows, aux_head, 1e-2, 2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    aux_before = aux_head.weight.detach().clone()

    train.train(model, [aux], cpu, tokenizer, 42, NO_DEADLINE)  # sequential: the aux phase
    assert not torch.equal(aux_head.weight, aux_before)
    query = model.bert.encoder.layer[0].attention.self.query.weight
    assert not torch.equal(
        query, before["bert.encoder.layer.0.attention.self.query.weight"]
    )  # the encoder learns
    assert torch.equal(target_head.weight, before["classifier.weight"])  # its head waits, fresh

    target = train.Task("target", random_windows(16), target_head, 1e-2, 1)
    aux_mid = aux_head.weight.detach().clone()
    train.train(model, [target, aux], cpu, tokenizer, 42, NO_DEADLINE)  # mixed: both heads learn in one phase
    assert not torch.equal(target_head.weight, before["classifier.weight"])
    assert not torch.equal(aux_head.weight, aux_mid)
    assert target.epochs_done == 1.0 and aux.epochs_done == 4.0


def test_a_batch_is_padded_to_its_longest_window_or_to_max_length(tokenizer, monkeypatch):
    windows = [{"input_ids": [101, 7, 8, 102], "labels": [-100, 1, 2, -100]}, {"input_ids": [101, 9, 102],
                                                                              "labels": [-100, 3, -100]}]
    batch = train.collate(windows, tokenizer, torch.device("cpu"))
    assert batch["input_ids"].tolist() == [[101, 7, 8, 102], [101, 9, 102, tokenizer.pad_token_id]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 1, 2, -100], [-100, 3, -100, -100]]
    monkeypatch.setattr(train, "DYNAMIC_PADDING", False)
    monkeypatch.setattr(train, "MAX_LENGTH", 6)
    padded = train.collate([{k: w[k] for k in ("input_ids",)} for w in windows], tokenizer, torch.device("cpu"))
    assert padded["input_ids"].shape == (2, 6) and "labels" not in padded  # windows to predict have none
    assert padded["attention_mask"].sum(1).tolist() == [4, 3]


def test_mc_dropout_blends_sampled_passes_into_the_prediction(monkeypatch, one_thread, tokenizer):
    model, windows, cpu = tiny_bert(), random_windows(5), torch.device("cpu")
    plain = train.predict_window_probs(model, windows, cpu, tokenizer)
    monkeypatch.setattr(train, "MC_DROPOUT_PASSES", 3)
    blended = train.predict_window_probs(model, windows, cpu, tokenizer)
    assert all(np.allclose(p.sum(-1), 1, atol=1e-5) for p in blended)
    assert not all(np.allclose(a, b) for a, b in zip(plain, blended))
    monkeypatch.setattr(train, "MC_DROPOUT_WEIGHT", 0.0)
    unblended = train.predict_window_probs(model, windows, cpu, tokenizer)
    assert all(np.allclose(a, b) for a, b in zip(plain, unblended))
    assert not model.training


# ----- Command line and config -----


def config_block(source: str) -> list[str]:
    """The lines of train.py's config block: from its banner to the next section's."""
    return source[source.index("# ----- Config") : source.index("# ----- Checks")].strip().splitlines()[1:]


def test_the_command_line_holds_only_the_loops_options(capsys):
    assert vars(runtime.parse_args([])) == {
        "out": Path("runs/manual"),
        "seed": 42,
        "data": prepare.DATA_DIR,
        "device": None,
        "limit": None,
        "fold": None,
        "deadline": 0.0,
        "check": False,
        "check_space": None,
    }
    given = runtime.parse_args(["--seed", "7", "--limit", "5", "--fold", "2", "--deadline", "1750000000.5"])
    assert (given.seed, given.limit, given.fold, given.deadline) == (7, 5, 2, 1750000000.5)
    for old in (["--model", "minilm"], ["--epochs", "1"], ["--lr", "1e-4"]):
        with pytest.raises(SystemExit) as exited:
            runtime.parse_args(old)
        assert exited.value.code == 2
        assert f"unrecognized arguments: {' '.join(old)}" in capsys.readouterr().err
    source = (REPO / "train.py").read_text(encoding="utf-8")
    assert "global " not in source  # nothing overwrites the config block


def test_the_config_block_is_grouped_one_knob_a_line_with_a_comment():
    block = config_block((REPO / "train.py").read_text(encoding="utf-8"))
    knobs = [line.split(" = ")[0] for line in block if re.match(r"[A-Z_]+ = ", line)]
    assert all("  # " in line for line in block if re.match(r"[A-Z_]+ = ", line))
    for gone in ("SEED", "TIME_BUDGET_S", "WINDOW_STRIDE"):
        assert gone not in knobs
    headings = [line for line in block if line.startswith("# ")]
    decoding = next(i for i, line in enumerate(block) if line.startswith("# Decoding"))
    speed = next(i for i, line in enumerate(block) if line.startswith("# Speed"))
    research = {line.split(" = ")[0] for line in block[:decoding] if " = " in line}
    assert {
        "MODEL_NAME",
        "LEARNING_RATE",
        "EPOCHS",
        "LABEL_SCHEME",
        "CLASS_WEIGHTS",
        "WEIGHT_DECAY",
    } <= research
    assert {"WINDOW_OVERLAP", "AUX_DATASETS", "AUX_EPOCHS", "AUX_LR", "TRANSFER_MODE"} <= research
    assert {line.split(" = ")[0] for line in block[decoding:speed] if " = " in line} == {
        "THRESHOLDS",
        "BOUNDARY_TRIM",
        "TRIM_LEADING_WORDS",
        "MC_DROPOUT_PASSES",
        "MC_DROPOUT_WEIGHT",
    }
    assert {line.split(" = ")[0] for line in block[speed:] if " = " in line} == {
        "PRECISION",
        "LENGTH_GROUPED",
        "DYNAMIC_PADDING",
        "FUSED_ADAMW",
        "GRADIENT_CHECKPOINTING",
        "EVAL_BATCH_SIZE",
    }
    assert len(headings) >= 7 and train.MODEL_NAME == "microsoft/deberta-large" and train.AUX_DATASETS == []


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("MODEL_NAME", "/nonexistent/model", "error: cannot load model '/nonexistent/model': no such folder"),
        ("THRESHOLDS", {"Disease": 0.5}, "error: THRESHOLDS: unknown entity types ['Disease']"),
        (
            "THRESHOLDS",
            {"SocialImpacts": "0.5"},
            "error: THRESHOLDS: probabilities must be numbers in [0, 1]",
        ),
        (
            "CLASS_WEIGHTS",
            {"B-SocialImpacts": 2.0},
            "error: CLASS_WEIGHTS: unknown labels ['B-SocialImpacts']",
        ),
        ("LABEL_SCHEME", "BIOES", "error: LABEL_SCHEME must be one of BIO, IO, not 'BIOES'"),
        ("TRANSFER_MODE", "joint", "error: TRANSFER_MODE must be one of sequential, mixed, not 'joint'"),
        ("WINDOW_OVERLAP", 190, "error: WINDOW_OVERLAP must be in [0, MAX_LENGTH - 2), not 190"),
        ("EPOCHS", 0, "error: EPOCHS must be a whole number of at least 1, not 0"),
        ("BATCH_SIZE", 2.5, "error: BATCH_SIZE must be a whole number of at least 1, not 2.5"),
        ("LEARNING_RATE", -1e-5, "error: LEARNING_RATE must be a number above 0, not -1e-05"),
        ("WARMUP_RATIO", 1.0, "error: WARMUP_RATIO must be a number in [0, 1), not 1.0"),
        ("FUSED_ADAMW", "yes", "error: FUSED_ADAMW must be True or False, not 'yes'"),
        (
            "AUX_DATASETS",
            ["ncbi"],
            "error: AUX_DATASETS: ['ncbi'] not prepared in the data folder (prepared: none",
        ),
    ],
)
def test_bad_settings_give_a_one_line_error_before_any_work(
    prepared_task7, tmp_path, monkeypatch, capsys, setting, value, message
):
    if setting == "CLASS_WEIGHTS":
        monkeypatch.setattr(train, "LABEL_SCHEME", "IO")  # IO learns no B- labels
    monkeypatch.setattr(train, setting, value)
    started = time.perf_counter()
    assert train.main(["--data", str(prepared_task7), "--out", str(tmp_path), "--device", "cpu"]) == 2
    assert time.perf_counter() - started < 5  # no model loaded, nothing trained
    stderr = capsys.readouterr().err.strip()
    assert stderr.splitlines()[-1].startswith(message)
    assert not list(tmp_path.iterdir())


def test_an_uncached_hub_model_fails_at_once_with_a_hint(prepared_task7, tmp_path, monkeypatch, capsys):
    """Without the check, the hub client retries an unreachable hub for about a minute."""
    from huggingface_hub import constants

    monkeypatch.setattr(train, "MODEL_NAME", "ner-autoresearch-tests/not-a-cached-model")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    hint = (
        "error: cannot load model 'ner-autoresearch-tests/not-a-cached-model': it is not in the local cache "
        'and the Hugging Face hub cannot be reached; set MODEL_NAME = "minilm" in train.py\'s config block'
    )
    for offline in (False, True):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
        started = time.perf_counter()
        assert train.main(["--data", str(prepared_task7), "--out", str(tmp_path), "--device", "cpu"]) == 2
        assert time.perf_counter() - started < 10
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith(hint) and "prepare the model cache" in last


# ----- End to end (MiniLM on the real data) -----

TINY = {"MODEL_NAME": "minilm", "EPOCHS": 1, "LEARNING_RATE": 1e-4, "MAX_LENGTH": 64, "WINDOW_OVERLAP": 16}


def copied_train_py(folder: Path, **settings) -> Path:
    """train.py copied into folder with config constants rewritten in place (comments kept)."""
    source = (REPO / "train.py").read_text(encoding="utf-8")
    for name, value in settings.items():
        pattern = re.compile(rf"^{name} = .*?(  #.*)?$", re.MULTILINE)
        line = f"{name} = {value!r}"
        source, count = pattern.subn(lambda match, line=line: line + (match.group(1) or ""), source)
        assert count == 1, name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.py").write_text(source, encoding="utf-8")
    return folder / "train.py"


def run_train(train_py: Path, data_dir: Path, out_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    options = ["--limit", "64", "--device", "cpu", "--data", str(data_dir), "--out", str(out_dir)]
    # prepare.py and evaluate.py come from the repository; on shared CPUs, spinning OpenMP threads cost 5x.
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(train_py), *options, *extra],
        cwd=train_py.parent,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )


def summary_block(stdout: str) -> dict[str, str]:
    block = stdout.split("\n---\n")[-1]
    return dict(line.split(": ", 1) for line in block.strip().splitlines())


def check_predictions(data_dir: Path, out_dir: Path, splits=("val", "holdout")) -> None:
    """Every row predicted, one valid tag per token."""
    for split in splits:
        rows = read_jsonl(data_dir / f"{split}.jsonl")
        predictions = {row["id"]: row["tags"] for row in read_jsonl(out_dir / f"pred_{split}.jsonl")}
        assert list(predictions) == [row["id"] for row in rows]
        for row in rows:
            assert len(predictions[row["id"]]) == len(row["tokens"]) and is_valid_bio(predictions[row["id"]])


def check_run(data_dir: Path, out_dir: Path, result: subprocess.CompletedProcess) -> None:
    """What a user checks after a run: every row predicted, valid tags, a parseable and honest summary."""
    assert result.returncode == 0, result.stderr[-3000:]
    check_predictions(data_dir, out_dir)
    test_rows = read_jsonl(data_dir / "test.jsonl")
    submission = pd.read_csv(out_dir / "pred_test.csv")
    assert list(submission.columns) == ["ID", "predicted_ner_tags"]
    assert list(submission["ID"]) == [row["source_id"] for row in test_rows]
    for row, cell in zip(test_rows, submission["predicted_ner_tags"]):
        tags = ast.literal_eval(cell)
        assert len(tags) == len(row["tokens"]) and is_valid_bio(tags)

    block = summary_block(result.stdout)
    assert list(block) == [
        "strict_f1",
        "relaxed_f1",
        *(f"strict_f1_{t}" for t in TYPES),
        *(f"relaxed_f1_{t}" for t in TYPES),
        "device",
        "epochs",
        "peak_vram_mb",
        "train_seconds",
        "total_seconds",
        "num_params_M",
    ]
    val = read_jsonl(data_dir / "val.jsonl")
    predicted = {row["id"]: row["tags"] for row in read_jsonl(out_dir / "pred_val.jsonl")}
    rescored = score([row["tags"] for row in val], [predicted[row["id"]] for row in val])
    assert float(block["strict_f1"]) == pytest.approx(rescored["strict"]["f1"], abs=1e-6)
    assert float(block["relaxed_f1"]) == pytest.approx(rescored["relaxed"]["f1"], abs=1e-6)
    for t in TYPES:
        assert float(block[f"strict_f1_{t}"]) == pytest.approx(
            rescored["strict"]["per_type"][t]["f1"], abs=1e-6
        )
    assert block["device"] == "cpu" and block["epochs"] == "1.00"
    assert float(block["peak_vram_mb"]) == 0.0 and 20 < float(block["num_params_M"]) < 25
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["config"]["EPOCHS"] == 1 and summary["config"]["MODEL_NAME"] == "minilm"
    assert "SEED" not in summary["config"] and summary["seed"] == 42
    assert summary["epochs_done"] == 1.0 and summary["device"] == "cpu"
    assert summary["scores"]["strict"]["f1"] == pytest.approx(rescored["strict"]["f1"])


def test_end_to_end_minilm_run_with_a_long_test_row(prepared_task7, tmp_path):
    """Fast variant: the real train/val/holdout with a few test rows, one of them many windows long."""
    data_dir = tmp_path / "data"
    shutil.copytree(prepared_task7, data_dir)
    test_rows = sorted(read_jsonl(data_dir / "test.jsonl"), key=lambda row: len(row["tokens"]))
    long_row = next(row for row in test_rows if len(row["tokens"]) > 3 * TINY["MAX_LENGTH"])
    lines = [json.dumps(row) for row in [*test_rows[:4], long_row]]
    (data_dir / "test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    result = run_train(copied_train_py(tmp_path / "code", **TINY), data_dir, tmp_path / "out", "--fold", "2")
    check_run(data_dir, tmp_path / "out", result)
    assert "epoch 1/1" in result.stdout and "fold 2 " in result.stdout
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["fold"] == 2


@pytest.mark.slow
def test_end_to_end_minilm_run_on_the_full_test_set(prepared_task7, tmp_path):
    """Every one of the 578 official test rows, including those over 9,000 tokens, gets one tag per token."""
    assert max(len(row["tokens"]) for row in read_jsonl(prepared_task7 / "test.jsonl")) > 9000
    settings = {**TINY, "MAX_LENGTH": 192, "WINDOW_OVERLAP": 64}
    result = run_train(copied_train_py(tmp_path / "code", **settings), prepared_task7, tmp_path / "out")
    check_run(prepared_task7, tmp_path / "out", result)
    assert len(read_jsonl(prepared_task7 / "test.jsonl")) == 578


def sandbox_view(data_dir: Path, view: Path, val_rows: int | None = None) -> Path:
    """Data as the loop's sandbox gives it: train, tokens-only val, the manifest (and any aux sets); no
    holdout, no test."""
    view.mkdir(parents=True)
    shutil.copy(data_dir / "train.jsonl", view)
    shutil.copy(data_dir / "manifest.json", view)
    if (data_dir / "aux").is_dir():
        shutil.copytree(data_dir / "aux", view / "aux")
    rows = read_jsonl(data_dir / "val.jsonl")[:val_rows]
    (view / "val.jsonl").write_text("".join(json.dumps(sources.tokens_only([row])[0]) + "\n" for row in rows))
    return view


def in_process_run(monkeypatch, capsys, settings: dict, *args: str) -> tuple[int, str, str]:
    """train.main() in this process with config constants set (faster than a fresh interpreter):
    (exit code, stdout, stderr)."""
    for name, value in settings.items():
        monkeypatch.setattr(train, name, value)
    code = train.main(["--device", "cpu", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_run_under_a_near_deadline_stops_early_without_val_tags(
    prepared_task7, tmp_path, monkeypatch, capsys
):
    view = sandbox_view(prepared_task7, tmp_path / "data", val_rows=40)
    deadline = time.time() + 25  # the model loads in a few seconds; then a few steps fit, not 1000 epochs
    settings = {**TINY, "EPOCHS": 1000, "MAX_LENGTH": 32, "WINDOW_OVERLAP": 8}  # could never finish in time
    options = [
        "--data",
        str(view),
        "--out",
        str(tmp_path / "out"),
        "--limit",
        "48",
        "--deadline",
        str(deadline),
    ]
    code, out, err = in_process_run(monkeypatch, capsys, settings, *options)
    finished = time.time()
    assert code == 0, err[-3000:]
    assert finished < deadline, f"finished {finished - deadline:.1f} s after the deadline"
    assert "deadline: stopped training (target) after " in out
    block = summary_block(out)
    assert list(block) == [
        "device",
        "epochs",
        "peak_vram_mb",
        "train_seconds",
        "total_seconds",
        "num_params_M",
    ]
    assert re.fullmatch(r"\d+\.\d\d", block["epochs"]) and 0 < float(block["epochs"]) < 1000
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "scores" not in summary and summary["stopped_by_deadline"] and summary["device"] == "cpu"
    assert f"{summary['epochs_done']:.2f}" == block["epochs"]
    assert f"epochs done: {block['epochs']} of 1000" in out
    check_predictions(view, tmp_path / "out", splits=("val",))
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["pred_val.jsonl", "summary.json"]


@pytest.fixture(scope="module")
def task7_with_aux(prepared_task7, task7_dir, ncbi_dir, bc5cdr_dir, tmp_path_factory) -> Path:
    """Task 7 prepared with two auxiliary sets, ncbi (Disease) and bc5cdr (Chemical, Disease), as the
    loop's sandbox sees it (its cache is the session's temporary one, set by prepared_task7)."""
    root = tmp_path_factory.mktemp("task7_with_aux")
    aux = ["--aux", f"ncbi={ncbi_dir}", "--aux", f"bc5cdr={bc5cdr_dir}"]
    assert build.main(["--source", str(task7_dir), *aux, "--out", str(root / "prepared")]) == 0
    return sandbox_view(root / "prepared", root / "view", val_rows=24)


@pytest.mark.parametrize(
    ("mode", "aux_sets"),
    [("sequential", ["ncbi"]), pytest.param("mixed", ["ncbi", "bc5cdr"], marks=pytest.mark.slow)],
    ids=["sequential", "mixed"],
)
def test_transfer_from_auxiliary_sets(task7_with_aux, tmp_path, monkeypatch, capsys, mode, aux_sets):
    settings = {
        **TINY,
        "MAX_LENGTH": 32,
        "WINDOW_OVERLAP": 8,
        "AUX_DATASETS": aux_sets,
        "TRANSFER_MODE": mode,
    }
    out = tmp_path / "out"
    options = ["--data", str(task7_with_aux), "--out", str(out), "--limit", "16"]
    code, log, err = in_process_run(monkeypatch, capsys, settings, *options)
    assert code == 0, err[-3000:]
    epoch_lines = [line.split("  loss")[0] for line in log.splitlines() if "epoch 1/1  loss" in line]
    expected = [*(f"aux {name}: epoch 1/1" for name in aux_sets), "epoch 1/1"]
    if mode == "sequential":
        assert epoch_lines == expected  # the aux set first, then the target
    else:
        assert sorted(epoch_lines) == sorted(expected)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_done"] == 1.0 and summary["aux_epochs_done"] == dict.fromkeys(aux_sets, 1.0)
    assert len(summary["train"]["phases"]) == (2 if mode == "sequential" else 1)
    assert summary["config"]["AUX_DATASETS"] == aux_sets and summary["config"]["TRANSFER_MODE"] == mode
    check_predictions(task7_with_aux, out, splits=("val",))  # the target's labels, not the aux sets'
    assert summary_block(log)["epochs"] == "1.00"


def test_check_names_every_bad_setting_at_once_and_loads_no_model(prepared_task7, monkeypatch, capsys):
    for name, value in (("LEARNING_RATE", "abc"), ("BATCH_SIZE", 0), ("SCHEDULE", "steps"), ("THRESHOLDS", [1])):
        monkeypatch.setattr(train, name, value)
    monkeypatch.setattr(train, "load_model", lambda *a: pytest.fail("--check must not load a model"))
    assert train.main(["--check", "--data", str(prepared_task7)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error
    for name in ("LEARNING_RATE", "BATCH_SIZE", "SCHEDULE", "THRESHOLDS"):
        assert name in error, error
    monkeypatch.undo()
    assert train.main(["--check", "--data", str(prepared_task7)]) == 0
    assert capsys.readouterr().out.strip() == "config: ok"


BEFORE_THE_RUNTIME_MOVE = "0b34034a6217e6584533ece2ba65b6d99e9280d2"  # train.py with its plumbing inside


def test_the_same_seed_predicts_the_same_bytes_as_before_the_plumbing_moved(prepared_task7, tmp_path):
    """runtime.py took train.py's command line, device, model loading, precision, deadline and summary: the
    same seed gives byte-identical predictions on CPU with the train.py from before the move."""
    from loop_helpers import data_without_test_rows

    from research_loop.config_block import set_constant

    project = Path(__file__).resolve().parents[1]
    shown = subprocess.run(["git", "cat-file", "-e", BEFORE_THE_RUNTIME_MOVE], cwd=project, check=False)
    if shown.returncode != 0:
        pytest.skip("this clone has no history back to the commit before the move")
    data = data_without_test_rows(prepared_task7, tmp_path / "data")
    outputs = {}
    for when in ("before", "after"):
        folder = tmp_path / when
        folder.mkdir()
        for name in ("train.py", "prepare.py", "evaluate.py", "runtime.py"):
            if when == "before":
                done = subprocess.run(["git", "show", f"{BEFORE_THE_RUNTIME_MOVE}:{name}"], cwd=project,
                                      capture_output=True, text=True, check=False)
                if done.returncode == 0:
                    (folder / name).write_text(done.stdout)
            else:
                shutil.copy2(project / name, folder / name)
        text = (folder / "train.py").read_text()
        for knob, value in (("MODEL_NAME", "minilm"), ("EPOCHS", 1)):
            text = set_constant(text, knob, value)
        (folder / "train.py").write_text(text)
        run = subprocess.run([sys.executable, "train.py", "--out", "out", "--seed", "7", "--data", str(data),
                              "--limit", "16", "--device", "cpu"], cwd=folder, capture_output=True, text=True,
                             timeout=900, check=False)
        assert run.returncode == 0, run.stderr[-2000:]
        outputs[when] = {name: (folder / "out" / name).read_bytes() for name in ("pred_val.jsonl", "pred_holdout.jsonl")}
    assert not (tmp_path / "before" / "runtime.py").exists()
    assert outputs["after"] == outputs["before"]
