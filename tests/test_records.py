"""results.tsv as typed records: plain cells that survive tabs and newlines, old quoted files still read,
a kill's half line dropped, rows the loop did not write noticed and put back; CURRENT_STATE.md from records."""

import csv
import shutil
from pathlib import Path

import pandas as pd
import pytest

from research_loop.night.folders import Workspace
from research_loop.night.opening import archive_other_night
from research_loop.records.current_state import StateView, render
from research_loop.records.ledger import Ledger, parse, read_records
from research_loop.records.run_record import RecordError, RunRecord, Status, columns_for

TYPES = ["ClinicalImpacts", "SocialImpacts"]
OLD_FILE = Path(__file__).parent / "fixtures" / "results_sample.tsv"


def record(run, status=Status.DISCARD, tag="nov23", **fields):
    made = RunRecord(run=run, tag=tag, status=status, commit="abc", **fields)
    return made


def ledger(tmp_path, name="results.tsv"):
    return Ledger(tmp_path / name, tmp_path / "store" / name, TYPES)


def test_rows_round_trip_with_tabs_newlines_and_quotes(tmp_path):
    book = ledger(tmp_path)
    baseline = record(0, Status.BASELINE, seeds=[42, 43])
    baseline.set_scores([0.30, 0.32], [0.4, 0.41], {"ClinicalImpacts": [0.2, 0.3], "SocialImpacts": [0.5, 0.5]})
    book.append(baseline)
    book.append(record(1, description='try\tthis\nand "IO" labels', direction="loss", cost_usd=None))
    lines = (tmp_path / "results.tsv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].split("\t") == columns_for(TYPES)
    assert '"IO" labels' in lines[2] and '""IO""' not in lines[2]  # cells are written as they are
    back = read_records(tmp_path / "results.tsv")
    assert back[1].description == 'try\tthis\nand "IO" labels' and back[1].cost_usd is None
    assert back[0].strict_f1 == pytest.approx(0.31) and back[0].seeds == [42, 43] and back[0].trials == 2
    frame = pd.read_csv(tmp_path / "results.tsv", sep="\t", quoting=csv.QUOTE_NONE)
    assert list(frame["run"]) == [0, 1] and frame["description"][1] == 'try\\tthis\\nand "IO" labels'


def test_an_old_quoted_file_reads_as_before():
    records = read_records(OLD_FILE)
    assert records[0].status is Status.BASELINE and records[0].seed_scores == [0.481, 0.4932, 0.4875]
    assert records[1].cost_usd == pytest.approx(0.3121) and records[1].device == ""
    assert all(record.tag == "mar14" for record in records)
    quoted = [row for row in parse(OLD_FILE.read_bytes())[1] if '"' in row.get("description", "")]
    assert all('""' not in row["description"] for row in quoted)  # CSV quoting undone, as before


def test_an_unreadable_cell_is_one_line_naming_the_run_and_column(tmp_path):
    path = tmp_path / "results.tsv"
    book = ledger(tmp_path)
    book.append(record(0, Status.BASELINE))
    text = path.read_text().replace("\t0.0\t", "\tlots\t", 1)
    path.write_text(text)
    with pytest.raises(RecordError, match=r"results.tsv: run 0: seconds: not a number: 'lots'"):
        read_records(path)


def test_an_existing_header_is_kept(tmp_path):
    path = tmp_path / "results.tsv"
    path.write_text("\t".join(columns_for(TYPES)[:6]) + "\n")
    ledger(tmp_path).append(record(1, note="not in this file's header"))
    assert path.read_text().splitlines()[1].split("\t") == ["1", "nov23", "abc", "discard", "", ""]


def test_a_half_written_last_row_is_dropped(tmp_path):
    book = ledger(tmp_path)
    book.append(record(0))
    with (tmp_path / "results.tsv").open("a") as file:
        file.write("1\tnov23\tdef")
    assert book.drop_partial_row()
    assert [item.run for item in book.records()] == [0]
    assert not book.drop_partial_row()


def test_rows_the_loop_did_not_write_are_noticed_and_put_back(tmp_path):
    book = ledger(tmp_path)
    book.append(record(0, Status.BASELINE))
    assert book.problem() is None
    with (tmp_path / "results.tsv").open("a") as file:
        file.write("1\tnov23\tforged\tkeep\t0.99\t0.99\n")  # a forged keep
    assert "differs from the rows the loop wrote" in book.problem()
    book.restore(tmp_path / "saved" / "results.tsv")
    assert [item.run for item in book.records()] == [0] and book.problem() is None
    assert "forged" in (tmp_path / "saved" / "results.tsv").read_text()
    (tmp_path / "results.tsv").unlink()
    (tmp_path / "results.tsv").symlink_to(tmp_path / "saved" / "results.tsv")
    assert "symbolic link" in book.problem()


def test_another_nights_results_are_archived_and_come_back(tmp_path):
    ledger(tmp_path).append(record(0, tag="old"))
    (tmp_path / "CURRENT_STATE.md").write_text("old state")
    notes = []
    archive_other_night(Workspace(tmp_path, "new"), notes)
    assert not (tmp_path / "results.tsv").exists() and "tag old" in notes[0]
    assert read_records(tmp_path / "runs" / "old" / "results.tsv")[0].tag == "old"
    assert (tmp_path / "runs" / "old" / "CURRENT_STATE.md").read_text() == "old state"
    Ledger(tmp_path / "results.tsv", tmp_path / "store2", TYPES).append(record(0, tag="new"))
    archive_other_night(Workspace(tmp_path, "old"), notes)  # resuming "old" brings its file back
    assert read_records(tmp_path / "results.tsv")[0].tag == "old"
    assert read_records(tmp_path / "runs" / "new" / "results.tsv")[0].tag == "new"


def test_current_state_shows_one_number_per_run_with_its_trial_count():
    train_py = '"""doc"""\nimport os\n\nA = 1  # first\n# a heading\nB_2 = "x"  # second\n\ndef f():\n    C = 3\n'
    rows = [record(0, Status.BASELINE, direction="baseline", seeds=[42, 43, 44]),
            record(1, Status.KEEP, direction="loss", description="weights", seeds=[42, 43, 44]),
            record(2, Status.DISCARD, direction="loss", seeds=[42]),
            record(3, Status.CRASH, direction="loss", note="exit code 1: boom")]
    for item, scores in zip(rows, ([0.5] * 3, [0.55] * 3, [0.60], [])):
        item.set_scores(scores, scores, {})
    text = render(rows, StateView(tag="nov23", policy_line="Acceptance: confirm.", best_train_py=train_py,
                                  entity_types=["ClinicalImpacts"], full_trials=3, budget_line="runs 4 of 10."))
    assert "Run 1 (keep" in text and 'B_2 = "x"  # second' in text and "# a heading" in text
    assert "| 2 | discard | 0.6000 (1 seed) |" in text and "| 1 | keep | 0.5500 (3 seeds) |" in text
    # The one-seed 0.60 does not count as the direction's best: only confirmed means do.
    assert "| loss | 3 | 0.5500 | +0.0500 | 2 |" in text
    assert "exit code 1: boom" in text and "runs 4 of 10" in text


def test_an_old_results_file_gets_the_new_columns_in_place_and_keeps_every_cell(tmp_path):
    """A night resumed on a results.tsv from an older version records the columns added since, instead of
    dropping them: the real old file (CSV-quoted cells, no device/sandbox/... columns) is migrated in place."""
    from research_loop.records.ledger import header_of, read_records
    from research_loop.records.run_record import NEW_COLUMNS

    book = ledger(tmp_path)
    shutil.copy2(OLD_FILE, book.path)
    before = read_records(book.path)
    book.adopt()
    assert book.migrate() == NEW_COLUMNS
    assert header_of(book.path)[-len(NEW_COLUMNS):] == NEW_COLUMNS
    after = read_records(book.path)
    assert [record.to_cells(["ClinicalImpacts", "SocialImpacts"]) for record in after] == [
        record.to_cells(["ClinicalImpacts", "SocialImpacts"]) for record in before]
    assert book.problem() is None and book.migrate() == []  # the mirror holds the same bytes; done once
    new = record(len(after), device="cuda:0", sandbox="bwrap")
    book.append(new)
    last = read_records(book.path)[-1]
    assert (last.device, last.sandbox) == ("cuda:0", "bwrap")
