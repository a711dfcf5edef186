"""Tests for evaluate.py: the task metric's test vectors, agreement with seqeval on the real dev set, the CLI (unknown
entity types, a closed pipe)."""

import ast
import json
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

from evaluate import ScoreError, format_summary, main, read_tags, score, score_files, score_rows, spans

REPO = Path(__file__).resolve().parents[1]
TYPES = ("ClinicalImpacts", "SocialImpacts")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "evaluate.py", *map(str, args)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def dev_csv(task7_dir) -> Path:
    return task7_dir / "new_dev_data.csv"


@pytest.fixture(scope="module")
def sample_csv(task7_dir) -> Path:
    return task7_dir / "sample_submission.csv"


@pytest.fixture(scope="module")
def dev_gold(dev_csv) -> dict[str, list[str]]:
    """id -> tags of the official dev CSV, read with pandas (independently of evaluate.py)."""
    frame = pd.read_csv(dev_csv, dtype=str, keep_default_na=False)
    return {row.ID: ast.literal_eval(row.ner_tags) for row in frame.itertuples()}


# ----- the task metric's test vectors (strict and relaxed, per type and overall) -----


def expand(short: str) -> list[str]:
    """'B-S I-S O' -> ['B-SocialImpacts', 'I-SocialImpacts', 'O']."""
    names = {"C": "ClinicalImpacts", "S": "SocialImpacts"}
    return [tag if tag == "O" else f"{tag[:2]}{names[tag[2:]]}" for tag in short.split()]


def prf(hits: int, predicted: int, gold: int) -> tuple[float, float, float]:
    precision = hits / predicted if predicted else 0.0
    recall = hits / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


# gold, pred, strict {type: (TP, FP, FN)}, relaxed {type: (overlap, pred tokens, gold tokens)},
# relaxed overall (P, R, F1) as published with the vectors (3 decimals).
METRIC_VECTORS = [
    ("B-S I-S I-S I-S", "B-S I-S O O", {"S": (0, 1, 1)}, {"S": (2, 2, 4)}, (1.0, 0.5, 0.667)),
    ("B-C", "B-S", {"C": (0, 0, 1), "S": (0, 1, 0)}, {"C": (0, 0, 1), "S": (0, 1, 0)}, (0.0, 0.0, 0.0)),
    ("O B-C I-C", "O I-C I-C", {"C": (1, 0, 0)}, {"C": (2, 2, 2)}, (1.0, 1.0, 1.0)),
    ("B-S I-S I-S I-S", "B-S I-S O B-S", {"S": (0, 2, 1)}, {"S": (3, 3, 4)}, (1.0, 0.75, 0.857)),
    ("B-C O B-C", "B-C I-C I-C", {"C": (0, 1, 2)}, {"C": (1, 3, 2)}, (0.333, 0.5, 0.4)),
    (
        "B-C I-C",
        "B-C I-S",
        {"C": (0, 1, 1), "S": (0, 1, 0)},
        {"C": (1, 1, 2), "S": (0, 1, 0)},
        (0.5, 0.5, 0.5),
    ),
    ("O B-C O", "B-C I-C I-C", {"C": (0, 1, 1)}, {"C": (1, 3, 1)}, (0.333, 1.0, 0.5)),
]


def assert_figures(figures: dict, expected: tuple[float, float, float]) -> None:
    assert (figures["precision"], figures["recall"], figures["f1"]) == pytest.approx(expected, abs=1e-12)


def check_against_counts(result: dict, strict: dict, relaxed: dict) -> None:
    names = {"C": "ClinicalImpacts", "S": "SocialImpacts"}
    strict_by_type = {t: prf(tp, tp + fp, tp + fn) for t, (tp, fp, fn) in strict.items()}
    relaxed_by_type = {t: prf(*counts) for t, counts in relaxed.items()}
    assert set(result["strict"]["per_type"]) == {names[t] for t in strict}
    assert set(result["relaxed"]["per_type"]) == {names[t] for t in relaxed}
    for short, expected in strict_by_type.items():
        assert_figures(result["strict"]["per_type"][names[short]], expected)
    for short, expected in relaxed_by_type.items():
        assert_figures(result["relaxed"]["per_type"][names[short]], expected)
    tp, fp, fn = (sum(counts[i] for counts in strict.values()) for i in range(3))
    assert_figures(result["strict"], prf(tp, tp + fp, tp + fn))
    assert_figures(result["relaxed"], prf(*(sum(counts[i] for counts in relaxed.values()) for i in range(3))))


@pytest.mark.parametrize("gold, pred, strict, relaxed, relaxed_overall", METRIC_VECTORS)
def test_spec_vector(gold, pred, strict, relaxed, relaxed_overall):
    result = score([expand(gold)], [expand(pred)])
    check_against_counts(result, strict, relaxed)
    relaxed_figures = tuple(result["relaxed"][metric] for metric in ("precision", "recall", "f1"))
    assert relaxed_figures == pytest.approx(relaxed_overall, abs=5e-4)  # published to 3 decimals


def test_spec_vectors_pool_their_counts_when_scored_together():
    result = score([expand(v[0]) for v in METRIC_VECTORS], [expand(v[1]) for v in METRIC_VECTORS])
    strict, relaxed = {}, {}
    for _, _, row_strict, row_relaxed, _ in METRIC_VECTORS:
        for totals, row in ((strict, row_strict), (relaxed, row_relaxed)):
            for t, counts in row.items():
                totals[t] = tuple(a + b for a, b in zip(totals.get(t, (0, 0, 0)), counts, strict=True))
    check_against_counts(result, strict, relaxed)


def test_spans_end_is_exclusive_and_follow_conlleval_rules():
    assert spans(["O", "I-C", "I-C", "B-S", "I-C", "O", "B-C", "B-C"]) == [
        ("C", 1, 3),
        ("S", 3, 4),
        ("C", 4, 5),
        ("C", 6, 7),
        ("C", 7, 8),
    ]
    assert spans(["O", "O"]) == []
    assert spans([]) == []


def test_no_rows_and_no_spans_score_zero_not_nan():
    for result in (score([], []), score([["O", "O"]], [["O", "O"]])):
        assert format_summary(result).splitlines() == [
            "strict_f1: 0.0000",
            "strict_precision: 0.0000",
            "strict_recall: 0.0000",
            "relaxed_f1: 0.0000",
            "relaxed_precision: 0.0000",
            "relaxed_recall: 0.0000",
        ]


# ----- Agreement with seqeval on perturbed real dev gold -----


def perturb(tags: list[str], rng: random.Random) -> list[str]:
    """One to three random edits: flip a tag, shift a boundary, drop a span, change a type, stray I-."""
    tags = list(tags)
    labels = ["O"] + [f"{p}-{t}" for t in TYPES for p in "BI"]
    for _ in range(rng.randint(1, 3)):
        found = spans(tags)
        edit = rng.choice(["flip", "shift", "drop", "retype", "stray"])
        if edit == "flip" or (not found and edit != "stray"):
            tags[rng.randrange(len(tags))] = rng.choice(labels)
        elif edit == "stray":
            tags[rng.randrange(len(tags))] = f"I-{rng.choice(TYPES)}"
        else:
            span_type, start, end = rng.choice(found)
            if edit == "drop":
                tags[start:end] = ["O"] * (end - start)
            elif edit == "retype":
                new_type = rng.choice(TYPES)
                tags[start:end] = [f"B-{new_type}"] + [f"I-{new_type}"] * (end - start - 1)
            else:
                new_start = min(max(0, start + rng.choice([-1, 1])), end - 1)
                new_end = max(min(len(tags), end + rng.choice([-1, 1])), new_start + 1)
                tags[start:end] = ["O"] * (end - start)
                tags[new_start:new_end] = [f"B-{span_type}"] + [f"I-{span_type}"] * (new_end - new_start - 1)
    return tags


def test_strict_matches_seqeval_and_relaxed_keeps_its_invariants_on_300_perturbations_of_dev(dev_gold):
    gold_rows = [tags for tags in dev_gold.values() if tags]
    rng = random.Random(7)
    seen_types = set()
    for _ in range(300):
        gold = rng.sample(gold_rows, 40)
        rate = rng.choice([0.0, 0.2, 0.6, 1.0])
        pred = [perturb(tags, rng) if rng.random() < rate else list(tags) for tags in gold]
        result = score(gold, pred)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # seqeval warns on 0/0; it scores them 0.0, as we do
            expected = (precision_score(gold, pred), recall_score(gold, pred), f1_score(gold, pred))
            report = classification_report(gold, pred, output_dict=True)
        assert_figures(result["strict"], expected)
        report_types = {name for name in report if not name.endswith(" avg")}
        assert set(result["strict"]["per_type"]) == report_types
        for name, figures in result["strict"]["per_type"].items():
            row = report[name]
            assert_figures(figures, (row["precision"], row["recall"], row["f1-score"]))
        seen_types |= report_types

        relaxed = result["relaxed"]
        for figures in [relaxed, *relaxed["per_type"].values()]:
            assert all(0.0 <= figures[m] <= 1.0 for m in ("precision", "recall", "f1"))
        # An exactly right span keeps all its tokens in relaxed, so strict 1.0 implies relaxed 1.0.
        for metric in ("precision", "recall"):
            if result["strict"][metric] == 1.0:
                assert relaxed[metric] == 1.0
        if rate == 0.0:
            assert_figures(result["strict"], (1.0, 1.0, 1.0))
            assert_figures(relaxed, (1.0, 1.0, 1.0))
    assert seen_types == set(TYPES)


def test_identical_predictions_score_one_and_all_o_predictions_score_zero_on_dev(dev_gold):
    gold = list(dev_gold.values())
    perfect = score(gold, gold)
    for mode in ("strict", "relaxed"):
        assert set(perfect[mode]["per_type"]) == set(TYPES)
        for figures in [perfect[mode], *perfect[mode]["per_type"].values()]:
            assert_figures(figures, (1.0, 1.0, 1.0))
    empty = score(gold, [["O"] * len(tags) for tags in gold])
    for mode in ("strict", "relaxed"):
        for figures in [empty[mode], *empty[mode]["per_type"].values()]:
            assert_figures(figures, (0.0, 0.0, 0.0))


def test_relaxed_credits_partial_overlap_that_strict_does_not():
    gold = [expand("O B-C I-C I-C O B-S")]
    pred = [expand("O O B-C I-C I-C B-C")]  # C shifted right by one; S predicted as C
    result = score(gold, pred)
    assert result["strict"]["f1"] == 0.0
    assert_figures(result["relaxed"]["per_type"]["ClinicalImpacts"], prf(2, 4, 3))
    assert_figures(result["relaxed"]["per_type"]["SocialImpacts"], prf(0, 0, 1))


# ----- Files and rows -----


def write_jsonl(path: Path, rows: dict[str, list[str]]) -> Path:
    path.write_text("".join(json.dumps({"id": i, "tags": t}) + "\n" for i, t in rows.items()))
    return path


def write_csv(path: Path, rows: dict[str, list[str]], column: str = "predicted_ner_tags") -> Path:
    pd.DataFrame({"ID": list(rows), column: [repr(t) for t in rows.values()]}).to_csv(path, index=False)
    return path


def test_read_tags_reads_official_csv_and_prepared_jsonl_alike(dev_gold, dev_csv, tmp_path):
    gold = dev_gold
    assert len(gold) == 258
    assert read_tags(dev_csv) == gold
    assert read_tags(write_jsonl(tmp_path / "dev.jsonl", gold)) == gold
    assert read_tags(write_csv(tmp_path / "dev.csv", gold)) == gold


def test_score_files_matches_rows_by_id_not_by_order(dev_gold, dev_csv, tmp_path):
    gold = dev_gold
    shuffled = dict(reversed(list(gold.items())))
    pred_path = write_jsonl(tmp_path / "pred.jsonl", shuffled)
    assert_figures(score_files(pred_path, dev_csv)["strict"], (1.0, 1.0, 1.0))


def test_score_rows_names_the_offending_row():
    with pytest.raises(ScoreError, match=r"^preds\.jsonl: row b: 1 tags, but the gold row has 2$"):
        score_rows({"a": ["O"], "b": ["O", "O"]}, {"a": ["O"], "b": ["O"]}, pred_name="preds.jsonl")


def test_subset_scores_only_pred_rows_but_still_refuses_extra_ids(tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", {"a": expand("B-C I-C"), "b": expand("B-S")})
    pred = write_jsonl(tmp_path / "pred.jsonl", {"a": expand("B-C I-C")})
    with pytest.raises(ScoreError, match="lacks 1 of 2 gold ids"):
        score_files(pred, gold)
    result = score_files(pred, gold, subset=True)
    assert_figures(result["strict"], (1.0, 1.0, 1.0))
    assert set(result["strict"]["per_type"]) == {"ClinicalImpacts"}
    extra = write_jsonl(tmp_path / "extra.jsonl", {"a": expand("B-C I-C"), "z": ["O"]})
    with pytest.raises(ScoreError, match=r"1 ids not in the gold file \(z\)"):
        score_files(extra, gold, subset=True)


# ----- CLI -----


def assert_one_error_line(stderr: str, *mentions: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in stderr
    for text in mentions:
        assert text in lines[0]


def test_cli_refuses_the_partial_sample_submission_without_subset(dev_csv, sample_csv):
    done = run_cli(sample_csv, "--gold", dev_csv)
    assert done.returncode == 2
    assert done.stdout == ""
    assert_one_error_line(done.stderr, str(sample_csv), "lacks 248 of 258 gold ids", "--subset")


def test_cli_scores_the_sample_submission_with_subset(dev_gold, dev_csv, sample_csv, tmp_path):
    # The organisers' sample holds 10 dev rows with their gold tags, so a correct scorer gives 1.0.
    sample = read_tags(sample_csv)
    gold = dev_gold
    assert len(sample) == 10 and all(gold[i] == tags for i, tags in sample.items())
    json_out = tmp_path / "result.json"
    done = run_cli(sample_csv, "--gold", dev_csv, "--subset", "--json", json_out)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["note: --subset: scored 10 of 258 gold rows"]
    assert done.stdout.splitlines()[:6] == [
        "strict_f1: 1.0000",
        "strict_precision: 1.0000",
        "strict_recall: 1.0000",
        "relaxed_f1: 1.0000",
        "relaxed_precision: 1.0000",
        "relaxed_recall: 1.0000",
    ]
    assert "ClinicalImpacts" in done.stdout and "SocialImpacts" in done.stdout
    written = json.loads(json_out.read_text())
    assert written == score_files(sample_csv, dev_csv, subset=True)


def test_cli_json_has_the_documented_shape(dev_gold, dev_csv, tmp_path):
    gold = dev_gold
    pred = {i: ["O"] * len(t) if n % 2 else t for n, (i, t) in enumerate(gold.items())}
    json_out = tmp_path / "out" / "result.json"
    json_out.parent.mkdir()
    assert (
        main(
            [str(write_jsonl(tmp_path / "pred.jsonl", pred)), "--gold", str(dev_csv), "--json", str(json_out)]
        )
        == 0
    )
    written = json.loads(json_out.read_text())
    assert set(written) == {"strict", "relaxed"}
    for mode in ("strict", "relaxed"):
        assert set(written[mode]) == {"precision", "recall", "f1", "per_type"}
        assert set(written[mode]["per_type"]) == set(TYPES)
        for figures in [written[mode], *written[mode]["per_type"].values()]:
            assert {k: type(v) for k, v in figures.items() if k != "per_type"} == dict.fromkeys(
                ("precision", "recall", "f1"), float
            )
    # Half the rows blanked: precision stays perfect, recall drops.
    assert written["strict"]["precision"] == 1.0 and 0.0 < written["strict"]["recall"] < 1.0


GOLD_ROWS = {"r1": ["O", "B-C", "I-C"], "r2": ["B-S", "O"], "r3": ["O"]}


def bad_pred(tmp_path: Path, case: str) -> tuple[Path, Path, list[str]]:
    """(pred, gold, texts the error must mention) for one kind of bad input."""
    gold = write_jsonl(tmp_path / "gold.jsonl", GOLD_ROWS)
    pred = tmp_path / "pred.csv"
    if case == "missing id":
        write_csv(pred, {"r1": GOLD_ROWS["r1"], "r3": GOLD_ROWS["r3"]})
        return pred, gold, ["lacks 1 of 3 gold ids (r2)"]
    if case == "extra id":
        write_csv(pred, {**GOLD_ROWS, "r9": ["O"]})
        return pred, gold, ["r9"]
    if case == "length mismatch":
        write_csv(pred, {**GOLD_ROWS, "r2": ["B-S"]})
        return pred, gold, ["row r2", "1 tags", "has 2"]
    if case == "invalid tag":
        write_csv(pred, {**GOLD_ROWS, "r1": ["O", "B_C", "I-C"]})
        return pred, gold, ["row r1", "'B_C'"]
    if case == "empty type":
        write_csv(pred, {**GOLD_ROWS, "r1": ["O", "B-", "I-C"]})
        return pred, gold, ["row r1", "'B-'"]
    if case == "unreadable cell":
        pred.write_text("ID,predicted_ner_tags\nr1,\"['O', 'B-C'\"\nr2,\"['B-S', 'O']\"\nr3,\"['O']\"\n")
        return pred, gold, ["row r1", "not a Python list literal"]
    if case == "cell not a list":
        pred.write_text("ID,predicted_ner_tags\nr1,\"'O B-C I-C'\"\nr2,\"['B-S', 'O']\"\nr3,\"['O']\"\n")
        return pred, gold, ["row r1", "must be a list"]
    if case == "missing file":
        return tmp_path / "nope.csv", gold, ["no such file"]
    if case == "no tag column":
        write_csv(pred, GOLD_ROWS, column="tags")
        return pred, gold, ["ID", "predicted_ner_tags"]
    if case == "duplicate id":
        pred.write_text("ID,predicted_ner_tags\nr1,['O']\nr2,['O']\nr1,['O']\n")
        return pred, gold, ["row r1", "duplicate id"]
    if case == "bad JSON line":
        pred = tmp_path / "pred.jsonl"
        pred.write_text('{"id": "r1", "tags": ["O", "B-C", "I-C"]}\n{"id": "r2", "tags": [\n')
        return pred, gold, ["line 2", "not valid JSON"]
    if case == "bad gold tag":
        gold = write_jsonl(tmp_path / "gold.jsonl", {**GOLD_ROWS, "r3": ["X-C"]})
        write_csv(pred, GOLD_ROWS)
        return pred, gold, [str(gold), "row r3", "'X-C'"]
    if case == "duplicate gold id":
        gold.write_text(gold.read_text() + json.dumps({"id": "r2", "tags": ["O", "O"]}) + "\n")
        write_csv(pred, GOLD_ROWS)
        return pred, gold, [str(gold), "row r2", "duplicate id"]
    raise AssertionError(case)


BAD_CASES = [
    "missing id",
    "extra id",
    "length mismatch",
    "invalid tag",
    "empty type",
    "unreadable cell",
    "cell not a list",
    "missing file",
    "no tag column",
    "duplicate id",
    "bad JSON line",
    "bad gold tag",
    "duplicate gold id",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_cli_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys, case):
    pred, gold, mentions = bad_pred(tmp_path, case)
    assert main([str(pred), "--gold", str(gold)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    named_file = str(gold) if str(gold) in mentions else str(pred)
    assert_one_error_line(captured.err, named_file, *mentions)


def test_cli_process_reports_a_missing_file_without_traceback(dev_csv, tmp_path):
    done = run_cli(tmp_path / "missing.jsonl", "--gold", dev_csv)
    assert done.returncode == 2
    assert_one_error_line(done.stderr, str(tmp_path / "missing.jsonl"), "no such file")


# ----- Entity types a prediction may use -----


def retyped_val(val_rows: list[dict], new_type: str) -> tuple[dict[str, list[str]], str, int]:
    """The val gold with its first span's type changed: (id -> tags, the row id, the span's position)."""
    pred = {row["id"]: list(row["tags"]) for row in val_rows}
    row_id, (_, start, end) = next((i, spans(t)[0]) for i, t in pred.items() if spans(t))
    pred[row_id][start:end] = [f"B-{new_type}"] + [f"I-{new_type}"] * (end - start - 1)
    return pred, row_id, start


def test_score_files_refuses_a_type_outside_the_given_ones_and_checks_nothing_without(
    prepared_task7, tmp_path
):
    val = [json.loads(line) for line in (prepared_task7 / "val.jsonl").read_text().splitlines()]
    pred, row_id, start = retyped_val(val, "Dosage")
    pred_path = write_jsonl(tmp_path / "pred.jsonl", pred)
    with pytest.raises(ScoreError) as raised:
        score_files(pred_path, prepared_task7 / "val.jsonl", entity_types=TYPES)
    assert str(raised.value) == (
        f"{pred_path}: row {row_id}: tags: unknown entity type 'Dosage' in tag 'B-Dosage' at position "
        f"{start} (the task's types: ClinicalImpacts, SocialImpacts)"
    )
    unchecked = score_files(pred_path, prepared_task7 / "val.jsonl")  # the loop's call: no types given
    assert "Dosage" in unchecked["strict"]["per_type"]
    assert score_files(pred_path, prepared_task7 / "val.jsonl", entity_types=[*TYPES, "Dosage"])


def test_cli_reads_the_types_from_the_manifest_beside_the_gold(prepared_task7, tmp_path, capsys):
    val = [json.loads(line) for line in (prepared_task7 / "val.jsonl").read_text().splitlines()]
    pred, row_id, _ = retyped_val(val, "Disease")
    csv_pred = write_csv(tmp_path / "pred.csv", pred)
    gold = prepared_task7 / "val.jsonl"
    assert main([str(csv_pred), "--gold", str(gold)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_error_line(
        captured.err, str(csv_pred), f"row {row_id}", "predicted_ner_tags", "unknown entity type 'Disease'"
    )
    assert main([str(csv_pred), "--gold", str(gold), "--types", "ClinicalImpacts,SocialImpacts,Disease"]) == 0
    assert "strict_f1: " in capsys.readouterr().out


def test_cli_without_a_manifest_uses_the_gold_types_and_types_option(tmp_path, capsys):
    gold = write_jsonl(tmp_path / "gold.jsonl", {"a": expand("B-C I-C O"), "b": expand("O O")})
    pred = write_jsonl(tmp_path / "pred.jsonl", {"a": expand("B-C I-C O"), "b": expand("B-S O")})
    assert main([str(pred), "--gold", str(gold)]) == 2
    assert_one_error_line(capsys.readouterr().err, str(pred), "row b", "tags", "'SocialImpacts'")
    assert main([str(pred), "--gold", str(gold), "--types", "ClinicalImpacts,SocialImpacts"]) == 0
    assert "strict_precision: 0.5000" in capsys.readouterr().out
    assert main([str(pred), "--gold", str(gold), "--types", " , "]) == 2
    assert_one_error_line(capsys.readouterr().err, "--types")


def test_a_bad_manifest_beside_the_gold_is_one_error_line(tmp_path, capsys):
    gold = write_jsonl(tmp_path / "gold.jsonl", {"a": expand("B-C I-C O")})
    (tmp_path / "manifest.json").write_text('{"labels": []}')
    assert main([str(gold), "--gold", str(gold)]) == 2
    assert_one_error_line(capsys.readouterr().err, str(tmp_path / "manifest.json"), "entity_types")


# ----- Pipes -----


def test_a_closed_pipe_ends_quietly(dev_gold, dev_csv, tmp_path):
    pred = write_jsonl(tmp_path / "pred.jsonl", dev_gold)
    command = [sys.executable, "evaluate.py", str(pred), "--gold", str(dev_csv)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader is gone before a byte is written: every write hits EPIPE
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 1
    assert stderr == ""

    shell = subprocess.run(
        f"{' '.join(map(str, command))} | head -1",
        shell=True,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shell.stdout == "strict_f1: 1.0000\n"
    assert shell.stderr == ""


def test_importing_the_scorer_pulls_in_nothing_heavy():
    """Its pure functions are cheap to import: rich, seqeval and scikit-learn wait until they are used."""
    code = ("import sys, evaluate; heavy = [m for m in ('rich', 'seqeval', 'sklearn', 'numpy', 'torch') "
            "if m in sys.modules]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
