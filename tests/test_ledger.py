"""results.tsv: appended rows survive tabs and newlines, a kill's half line is dropped, other tags archived."""

import pandas as pd

from research_loop.ledger import append_row, columns_for, drop_partial_row, read_rows, switch_tag
from research_loop.state import Budget, config_block, render

COLUMNS = columns_for(["ClinicalImpacts", "SocialImpacts"])


def row(run, tag="nov23", **fields):
    return {"run": run, "tag": tag, "commit": "abc", "status": "discard", "strict_f1": "0.5", **fields}


def test_rows_round_trip_through_pandas_with_tabs_and_newlines(tmp_path):
    path = tmp_path / "results.tsv"
    append_row(path, row(0, status="baseline"), COLUMNS)
    append_row(path, row(1, description="try\tthis\nand that", direction="loss"), COLUMNS)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and lines[0].split("\t") == COLUMNS
    frame = pd.read_csv(path, sep="\t")
    assert list(frame["run"]) == [0, 1]
    assert frame["description"][1] == "try\\tthis\\nand that"
    assert "strict_f1_SocialImpacts" in frame.columns and "seed_scores" in frame.columns


def test_an_existing_header_is_kept(tmp_path):
    path = tmp_path / "results.tsv"
    append_row(path, row(0), COLUMNS[:6])
    append_row(path, row(1, note="ignored: not in this file's header"), COLUMNS)
    assert [list(r) for r in read_rows(path)] == [COLUMNS[:6]] * 2


def test_a_half_written_last_row_is_dropped(tmp_path):
    path = tmp_path / "results.tsv"
    append_row(path, row(0), COLUMNS)
    with path.open("a") as file:
        file.write("1\tnov23\tdef")
    assert drop_partial_row(path)
    assert [r["run"] for r in read_rows(path)] == ["0"]
    assert not drop_partial_row(path)


def test_another_tags_results_are_archived_and_come_back(tmp_path):
    append_row(tmp_path / "results.tsv", row(0, tag="old"), COLUMNS)
    (tmp_path / "CURRENT_STATE.md").write_text("old state")
    assert switch_tag(tmp_path, "new") == "old"
    assert not (tmp_path / "results.tsv").exists()
    assert read_rows(tmp_path / "runs" / "old" / "results.tsv")[0]["tag"] == "old"
    assert (tmp_path / "runs" / "old" / "CURRENT_STATE.md").read_text() == "old state"
    append_row(tmp_path / "results.tsv", row(0, tag="new"), COLUMNS)
    assert switch_tag(tmp_path, "old") == "new"  # resuming "old" brings its file back
    assert read_rows(tmp_path / "results.tsv")[0]["tag"] == "old"
    assert read_rows(tmp_path / "runs" / "new" / "results.tsv")[0]["tag"] == "new"
    assert switch_tag(tmp_path, "old") is None


def test_current_state_lists_best_config_history_and_directions():
    train_py = '"""doc"""\nimport os\n\nA = 1  # first\n# a comment\nB_2 = "x"  # second\n\ndef f():\n    C = 3\n'
    assert config_block(train_py) == ["A = 1  # first", 'B_2 = "x"  # second']
    rows = [row(0, status="baseline", strict_f1="0.5", relaxed_f1="0.6", direction="baseline"),
            row(1, status="keep", strict_f1="0.55", direction="loss", description="weights"),
            row(2, status="discard", strict_f1="0.52", direction="loss"),
            row(3, status="crash", strict_f1="", direction="loss", note="exit code 1: boom")]
    for r in rows:
        r.setdefault("commit", "abc")
    text = render("nov23", rows, train_py, ["ClinicalImpacts"], Budget(runs=4, max_runs=10), "monotonic")
    assert "Run 1 (keep" in text and 'B_2 = "x"  # second' in text
    assert "| loss | 3 | 0.5500 | +0.0500 | 2 |" in text
    assert "exit code 1: boom" in text and "runs 4 of 10" in text
