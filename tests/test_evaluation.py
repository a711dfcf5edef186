"""Cross-validated, paired evaluation and the run budget, through whole nights with the fast fake train.py."""

import json
import re

import pytest
from loop_helpers import ScriptedAgent, loop_config, make_repo, results

from evaluate import score
from research_loop.agents.builtin_agent import NullAgent
from research_loop.evaluation.acceptance import make_policy
from research_loop.evaluation.dataviews import assign_folds
from research_loop.loop import run_loop

TAG = "t"


@pytest.fixture
def repo(tmp_path, prepared_task7):
    return make_repo(tmp_path, prepared_task7)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_a_cross_validated_night_pairs_folds_and_never_shows_a_folds_tags(repo):
    config = loop_config(repo, TAG, max_runs=3, eval_mode="cv", folds=5, policy=make_policy("confirm", trials=5))
    run_loop(config, ScriptedAgent([("QUALITY", 0.9), ("QUALITY", 0.3)]))
    rows = results(repo)
    assert [row["status"] for row in rows] == ["baseline", "keep", "discard"]
    # The baseline runs every fold on a second seed too: the paired noise is measured from the start.
    assert rows[0]["folds"] == "0,1,2,3,4,0,1,2,3,4" and rows[0]["seeds"] == "42,42,42,42,42,43,43,43,43,43"
    assert rows[1]["folds"] == "0,1,2,3,4" and rows[1]["seeds"] == "42,42,42,42,42"
    assert rows[2]["folds"] == "0" and "fold 0" in rows[2]["note"]  # screened out on the first fold
    assert "mean paired gain" in rows[1]["note"]
    folders = [repo / "runs" / TAG / "0001", *(repo / "runs" / TAG / "0001" / f"fold-{k}-seed-42" for k in range(1, 5))]
    train = read(repo / "data" / "train.jsonl")
    val = read(repo / "data" / "val.jsonl")
    folds = assign_folds(train + val, 5, 2026)
    gold, predicted = {}, {}
    for fold, folder in enumerate(folders):
        seen = json.loads((folder / "view.json").read_text())
        assert not seen["val_has_tags"] and seen["val_rows"] == sum(1 for k in folds.values() if k == fold)
        for row in read(folder / "pred_val.jsonl"):
            predicted[row["id"]] = row["tags"]
    for row in train + val:
        gold[row["id"]] = row["tags"]
    assert set(predicted) == set(gold)  # every train and val row predicted once, by the fold that held it out
    ids = sorted(gold)
    pooled = score([gold[i] for i in ids], [predicted[i] for i in ids])["strict"]["f1"]
    assert float(rows[1]["strict_f1"]) == pytest.approx(pooled, abs=1e-6)  # pooled over the union of folds
    night = json.loads((repo / "runs" / TAG / "night.json").read_text())
    assert night["eval"] == "cv" and night["split_seed"] == 2026
    state = (repo / "CURRENT_STATE.md").read_text()
    assert "5-fold cross-validation" in state and "(5 folds)" in state and "(10 folds)" in state
    assert re.search(r"measured on \d+ degrees of freedom of paired differences", state)


def test_a_null_cross_validated_night_keeps_nothing(repo):
    config = loop_config(repo, TAG, max_runs=8, eval_mode="cv", folds=5, policy=make_policy("confirm", trials=5),
                         check_duplicates=False, close_after=0)
    run_loop(config, NullAgent())
    rows = results(repo)
    assert len(rows) == 8 and [row["status"] for row in rows[1:]] == ["discard"] * 7


def test_every_run_gets_the_same_budget_and_an_overrun_is_a_timeout(repo):
    config = loop_config(repo, TAG, max_runs=3, run_budget_s=3.0, timeout_s=None)
    run_loop(config, ScriptedAgent([("QUALITY", 0.7), ("SLEEP_S", 30.0)]))
    rows = results(repo)
    assert [row["status"] for row in rows] == ["baseline", "keep", "timeout"]
    assert "--deadline" in (repo / "runs" / TAG / "0000" / "run.log").read_text()
    assert float(rows[2]["seconds"]) < 15  # killed soon after its budget, not at the night's timeout
    assert rows[1]["epochs"] == "1.00"  # what train.py did, for the agent to weigh against time
    state = (repo / "CURRENT_STATE.md").read_text()
    assert "same wall-clock budget" in state and "| epochs |" in state
