"""The error breakdown (research_loop/diagnostics.py) on hand-built gold/prediction pairs, one per category,
and against the fixed scorer's own per-type precision and recall on the real val rows."""

import json

import pytest
from loop_helpers import lexicon_tags

import evaluate
from research_loop.evaluation import diagnostics

TYPES = ["A", "B"]


def counts(gold, pred):
    """The breakdown of one row: gold and predicted tags as space-separated strings."""
    return diagnostics.breakdown({"r": gold.split()}, {"r": pred.split()}, evaluate.spans, TYPES)


def nonzero(entry):
    return {name: value for name, value in entry.items() if value and name != "confused_as"}


@pytest.mark.parametrize(
    "gold, pred, expected",
    [
        ("B-A I-A O", "B-A I-A O", {"exact": 1}),
        ("B-A I-A I-A", "B-A I-A O", {"too_short": 1}),
        ("O B-A I-A O", "O O B-A O", {"too_short": 1}),
        ("O B-A O", "B-A I-A O", {"too_long": 1}),
        ("B-A I-A O O", "O B-A I-A O", {"shifted": 1}),
        ("B-A I-A O", "O O O", {"missed": 1}),
        ("O I-A O", "O O O", {"missed": 1}),  # seqeval reads a lone I-A as a span
    ],
    ids=["exact", "too short", "too short (late start)", "too long", "shifted", "missed", "missed (I- start)"],
)
def test_each_gold_span_falls_in_exactly_one_category(gold, pred, expected):
    result = counts(gold, pred)
    predicted = len(evaluate.spans(pred.split()))
    assert nonzero(result["A"]) == {"gold": 1, **({"predicted": predicted} if predicted else {}), **expected}
    assert nonzero(result["B"]) == {}


def test_a_span_of_the_wrong_type_is_type_confusion_not_spurious():
    result = counts("B-A I-A O", "B-B I-B O")
    assert nonzero(result["A"]) == {"gold": 1, "type_confusion": 1}
    assert result["A"]["confused_as"] == {"B": 1}
    assert nonzero(result["B"]) == {"predicted": 1}  # overlaps a gold span, so not spurious


def test_a_prediction_overlapping_no_gold_span_is_spurious_under_its_own_type():
    result = counts("B-A O O O", "B-A O B-B O")
    assert nonzero(result["A"]) == {"gold": 1, "predicted": 1, "exact": 1}
    assert nonzero(result["B"]) == {"predicted": 1, "spurious": 1}


def test_a_span_predicted_in_two_pieces_counts_once_by_its_larger_piece():
    result = counts("B-A I-A I-A I-A O", "B-A O B-A I-A I-A")  # pieces 0-1 and 2-5: the larger runs past the end
    assert nonzero(result["A"]) == {"gold": 1, "predicted": 2, "shifted": 1}


def test_the_same_type_wins_over_a_larger_overlap_of_another_type():
    result = counts("B-A I-A I-A O", "B-B I-B B-A O")
    assert nonzero(result["A"]) == {"gold": 1, "predicted": 1, "too_short": 1}
    assert nonzero(result["B"]) == {"predicted": 1}


def test_rows_add_up_and_a_change_is_count_by_count():
    rows = lambda one, two: {"1": one.split(" "), "2": two.split(" ")}
    rows_gold = rows("B-A I-A O", "O B-B O")
    first = diagnostics.breakdown(rows_gold, rows("B-A O O", "O B-B O"), evaluate.spans, TYPES)
    second = diagnostics.breakdown(rows_gold, rows("B-A I-A O", "O O O"), evaluate.spans, TYPES)
    both = diagnostics.add(first, second)
    assert both["A"]["gold"] == 2 and both["A"]["exact"] == 1 and both["A"]["too_short"] == 1
    change = diagnostics.difference(second, first)
    assert nonzero(change["A"]) == {"exact": 1, "too_short": -1}
    assert nonzero(change["B"]) == {"predicted": -1, "exact": -1, "missed": 1}
    lines = diagnostics.table(change, TYPES, signed=True)
    assert lines[0].split("|")[1:-1] == [" type ", " gold ", " predicted ", " exact ", " too short ", " too long ",
                                         " shifted ", " type confusion ", " missed ", " spurious "]
    assert lines[2] == "| A | +0 | +0 | +1 | -1 | +0 | +0 | +0 | +0 | +0 |"
    assert lines[-1] == "| all | +0 | -1 | +0 | -1 | +0 | +0 | +0 | +1 | +0 |"


def test_on_real_val_rows_the_counts_give_the_scorers_own_precision_and_recall(prepared_task7):
    read = lambda name: [json.loads(line) for line in (prepared_task7 / name).read_text().splitlines() if line]
    train, val = read("train.jsonl"), read("val.jsonl")
    gold = {row["id"]: row["tags"] for row in val}
    predicted = {row["id"]: lexicon_tags(train, row["tokens"]) for row in val}
    types = json.loads((prepared_task7 / "manifest.json").read_text())["entity_types"]
    result = diagnostics.breakdown(gold, predicted, evaluate.spans, types)
    scored = evaluate.score_rows(gold, predicted)["strict"]["per_type"]
    for name in types:
        entry = result[name]
        assert sum(entry[category] for category in diagnostics.GOLD_CATEGORIES) == entry["gold"]
        assert entry["exact"] / entry["gold"] == pytest.approx(scored[name]["recall"])
        assert entry["exact"] / entry["predicted"] == pytest.approx(scored[name]["precision"])
    every = diagnostics.total(result)
    assert every["exact"] > 0 and every["spurious"] > 0 and every["missed"] > 0  # the lexicon errs every way
    assert every["too_short"] + every["too_long"] + every["shifted"] > 0
    # Counts only: nothing but type names and whole numbers.
    text = json.dumps(result)
    assert not any(row["id"] in text for row in val)
    assert diagnostics.clean(json.loads(text)) == result


# ----- a night: trial.json, CURRENT_STATE.md, the agent's context -----


def words(text):
    return {word.strip(".,:;()[]{}'\"!?*`#|-").lower() for word in text.split()}


def test_a_night_puts_the_breakdown_in_trial_json_and_current_state_and_nothing_of_val_but_counts_reaches_the_agent(
        tmp_path, prepared_task7):
    from loop_helpers import PROJECT, ScriptedAgent, loop_config, make_repo

    from research_loop.agents.prompt import first_message, system_prompt
    from research_loop.evaluation.acceptance import Monotonic
    from research_loop.loop import run_loop

    repo = make_repo(tmp_path, prepared_task7)
    agent = ScriptedAgent([("QUALITY", 0.9), ("QUALITY", 0.3), ("QUALITY", 0.2)])
    run_loop(loop_config(repo, "t", max_runs=3, policy=Monotonic()), agent)
    read = lambda name: [json.loads(line) for line in (repo / "data" / name).read_text().splitlines() if line]
    val, holdout, train = read("val.jsonl"), read("holdout.jsonl"), read("train.jsonl")
    types = json.loads((repo / "data" / "manifest.json").read_text())["entity_types"]

    # trial.json: the counts of the fixed scorer's spans on val.
    saved = json.loads((repo / "runs" / "t" / "0001" / "trial.json").read_text())["diagnostics"]
    gold_spans = {name: sum(span[0] == name for row in val for span in evaluate.spans(row["tags"])) for name in types}
    assert {name: saved[name]["gold"] for name in types} == gold_spans
    scored = evaluate.score_files(repo / "runs" / "t" / "0001" / "pred_val.jsonl", repo / "data" / "val.jsonl")
    assert diagnostics.total(saved)["exact"] == round(scored["strict"]["recall"] * sum(gold_spans.values()))

    # CURRENT_STATE.md: the best's table (run 1, kept) and the last run's change against it.
    state = (repo / "CURRENT_STATE.md").read_text()
    section = state.split("## Where the best run's errors are")[1].split("\n## ")[0]
    assert "Run 1, summed over its 1 seed:" in section
    best_all = next(line for line in section.splitlines() if line.startswith("| all | "))
    total = diagnostics.total(saved)
    assert best_all == "| all | " + " | ".join(str(total[count]) for count in diagnostics.COUNTS) + " |"
    assert "The last scored run, run 2 (discard), against the best, on the 1 seed both ran" in section
    last = json.loads((repo / "runs" / "t" / "0002" / "trial.json").read_text())["diagnostics"]
    change_all = [line for line in section.splitlines() if line.startswith("| all | ")][1]
    exact_change = diagnostics.total(last)["exact"] - total["exact"]
    assert exact_change < 0 and change_all.split(" | ")[3] == f"{exact_change:+d}"

    # Right after a keep, the new best is set against the best before it.
    after_keep = agent.contexts[1].current_state_md
    assert "Run 1 (kept) against the best before it, run 0, on the 1 seed both ran" in after_keep
    first = json.loads((repo / "runs" / "t" / "0000" / "trial.json").read_text())["diagnostics"]
    gained = diagnostics.total(saved)["exact"] - diagnostics.total(first)["exact"]
    assert gained > 0 and [line for line in after_keep.splitlines()
                           if line.startswith("| all | ")][1].split(" | ")[3] == f"{gained:+d}"

    # The report: the baseline's counts -> the best's, per type.
    from research_loop.report.data import build_report
    from research_loop.report.render import render_markdown

    report = render_markdown(build_report(repo, "t"))
    assert "## Where the errors are: baseline -> best (run 1), val counts over 1 seed" in report
    base = diagnostics.total(json.loads((repo / "runs" / "t" / "0000" / "trial.json").read_text())["diagnostics"])
    lines = report.splitlines()
    assert f"| gold | {saved[types[0]]['gold']} |" in report
    exact = next(line for line in lines if line.startswith("| exact | "))
    assert exact.endswith(f" | {base['exact']} -> {total['exact']} |"), exact
    missed = next(line for line in lines if line.startswith("| missed | "))
    assert missed.endswith(f" | {base['missed']} -> {total['missed']} |"), missed

    # The agent saw it (the last proposal's context, and the prompt an LLM agent gets)...
    context = agent.contexts[-1]
    prompt = system_prompt(context.program_md) + first_message(context)
    assert "## Where the best run's errors are" in context.current_state_md
    assert "Run 1, summed over its 1 seed:" in prompt and best_all in prompt
    assert "## Reading where the errors are" in prompt  # program.md says how to read it
    # ...and nothing of val or the holdout but counts: no row id, no word that only val or holdout rows have.
    seen = "\n".join([system_prompt(c.program_md) + first_message(c) + c.recent_results for c in agent.contexts])
    ids = [row["id"] for row in val + holdout]
    assert not [row_id for row_id in ids if row_id in seen]
    known = words((PROJECT / "program.md").read_text() + context.train_py + context.task_card)
    for source in (PROJECT / "research_loop").rglob("*.py"):
        known |= words(source.read_text())
    known |= {token.lower() for row in train for token in row["tokens"]}
    only_there = {token.lower() for row in val + holdout for token in row["tokens"]} - known
    only_there = {word for word in only_there if len(word) >= 4 and word.isalpha()}
    assert len(only_there) > 100  # the check has teeth
    assert not only_there & words(seen)


def test_in_cross_validation_the_breakdown_covers_every_row_once_and_a_screened_run_is_compared_on_its_fold(
        tmp_path, prepared_task7):
    from loop_helpers import ScriptedAgent, loop_config, make_repo

    from research_loop.evaluation.acceptance import make_policy
    from research_loop.loop import run_loop
    from research_loop.report.data import build_report
    from research_loop.report.render import render_markdown

    repo = make_repo(tmp_path, prepared_task7)
    config = loop_config(repo, "t", max_runs=3, eval_mode="cv", folds=5, policy=make_policy("confirm", trials=5))
    run_loop(config, ScriptedAgent([("QUALITY", 0.9), ("QUALITY", 0.3)]))
    read = lambda name: [json.loads(line) for line in (repo / "data" / name).read_text().splitlines() if line]
    all_gold = sum(len(evaluate.spans(row["tags"])) for row in read("train.jsonl") + read("val.jsonl"))
    state = (repo / "CURRENT_STATE.md").read_text()
    section = state.split("## Where the best run's errors are")[1].split("\n## ")[0]
    assert "Run 1, summed over its 5 folds:" in section
    assert next(line for line in section.splitlines() if line.startswith("| all | ")).split(" | ")[1] == str(all_gold)
    assert "run 2 (discard), against the best, on the 1 fold both ran" in section
    report = render_markdown(build_report(repo, "t"))
    # The baseline's second-seed replicates are left out: each row counted once, like for like with the best.
    assert "baseline -> best (run 1), CV counts over 5 folds" in report
    assert next(line for line in report.splitlines() if line.startswith("| gold | ")).endswith(f" | {all_gold} |")
