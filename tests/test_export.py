"""`export`: a run's train.py from its commit and a submission CSV for the test rows, copied or trained again."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from loop_helpers import FAKE_TRAIN_PY, ScriptedAgent, branch_runs, git, make_repo, results, set_constant

from evaluate import read_tags
from research_loop.builtin_agent import NullAgent
from research_loop.export import ExportError, current_tag, export_run
from research_loop.loop import LoopConfig, run_loop

TAG = "t"
TEST_ROWS = 12  # the fake tags the first token of the first QUALITY share of them
NIGHT = ["baseline", "keep", "discard", "invalid", "crash"]


def cut_data(prepared: Path, folder: Path, keep: dict[str, int]) -> Path:
    """A copy of the prepared data with some splits cut to their first rows."""
    folder.mkdir()
    for path in prepared.iterdir():
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        stem = path.name.removesuffix(".jsonl")
        (folder / path.name).write_text("".join(lines[: keep[stem]] if stem in keep else lines), encoding="utf-8")
    return folder


def loop_config(repo: Path, tag: str = TAG, **overrides) -> LoopConfig:
    return LoopConfig(**{"repo": repo, "tag": tag, "timeout_s": 60, "kill_grace_s": 1, "progress": False,
                         **overrides})


@pytest.fixture(scope="module")
def night(tmp_path_factory, prepared_task7):
    """A finished night with the fake train.py writing pred_test.csv: baseline, keep, discard, invalid, crash."""
    root = tmp_path_factory.mktemp("export_night")
    data = cut_data(prepared_task7, root / "data", {"test": TEST_ROWS})
    repo = make_repo(root, data, train_py=set_constant(FAKE_TRAIN_PY, "PREDICT_TEST", True))
    script = [("QUALITY", 0.7), ("QUALITY", 0.6), "this is not python (", ("ACTION", "crash")]
    run_loop(loop_config(repo, max_runs=len(NIGHT)), ScriptedAgent(script))
    assert [row["status"] for row in results(repo)] == NIGHT
    return repo


@pytest.fixture
def repo(night, tmp_path):
    """A private copy of the night's repository (tests delete run folders and files)."""
    return Path(shutil.copytree(night, tmp_path / "repo", symlinks=True))


def show(repo: Path, spec: str) -> bytes:
    """`git show SPEC` byte for byte."""
    return subprocess.run(["git", "show", spec], cwd=repo, check=True, capture_output=True).stdout


def predictions(repo: Path, run: int) -> Path:
    return repo / "runs" / TAG / f"{run:04d}" / "pred_test.csv"


def assert_valid_submission(path: Path, data: Path) -> None:
    """The official header, every test row once by its official ID, one valid tag per token."""
    assert path.read_text(encoding="utf-8").splitlines()[0] == "ID,predicted_ner_tags"
    tags = read_tags(path)
    rows = [json.loads(line) for line in (data / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(tags) == sorted(row["source_id"] for row in rows)
    assert all(len(tags[row["source_id"]]) == len(row["tokens"]) for row in rows)


def test_export_a_kept_run_copies_its_predictions(repo):
    commit = results(repo)[1]["commit"]
    result = export_run(repo, TAG, 1)

    assert result.train_py == repo / "exports" / "t-run0001" / "train.py"
    assert result.train_py.read_bytes() == show(repo, f"{commit}:train.py")
    assert not result.retrained and result.log is None and result.rows == TEST_ROWS
    assert result.submission.read_bytes() == predictions(repo, 1).read_bytes()
    assert_valid_submission(result.submission, repo / "data")
    assert "run 1 (keep" in result.source and commit[:10] in result.source
    assert any(str(result.submission) in line for line in result.lines())
    assert git(repo, "status", "--porcelain") == ""  # exports/ is ignored


def test_export_a_discarded_run_takes_train_py_from_its_ref(repo, tmp_path):
    working = (repo / "train.py").read_bytes()
    assert branch_runs(repo, TAG) == [1]  # the branch no longer holds run 2

    result = export_run(repo, TAG, 2, out_dir=tmp_path / "out")

    assert result.train_py == tmp_path / "out" / "train.py"
    assert result.train_py.read_bytes() == show(repo, f"refs/autoresearch/{TAG}/run-2:train.py")
    assert "QUALITY = 0.6" in result.train_py.read_text() and result.train_py.read_bytes() != working
    assert result.submission.read_bytes() == predictions(repo, 2).read_bytes()
    assert result.submission.read_bytes() != predictions(repo, 1).read_bytes()  # the runs predict differently
    assert (repo / "train.py").read_bytes() == working


def test_export_trains_again_when_the_run_folder_is_gone(repo):
    saved = predictions(repo, 2).read_bytes()
    shutil.rmtree(predictions(repo, 2).parent)
    working = (repo / "train.py").read_bytes()

    result = export_run(repo, TAG, 2)

    assert result.retrained and "is gone" in result.source
    assert_valid_submission(result.submission, repo / "data")
    # The run's own train.py with its first seed reproduces its predictions (the branch's would not).
    assert result.submission.read_bytes() == saved
    log = result.log.read_text()
    assert "--seed 42" in log and f"--data {repo / 'data'}" in log
    assert (repo / "train.py").read_bytes() == working and git(repo, "status", "--porcelain") == ""
    assert not predictions(repo, 2).parent.exists()  # nothing written back into runs/


@pytest.mark.parametrize("damage", ["drop the last row", "one tag too many"])
def test_predictions_that_do_not_cover_the_test_rows_are_trained_again(repo, damage):
    path = predictions(repo, 1)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if damage == "drop the last row":
        lines = lines[:-1]
    else:
        lines[1] = lines[1].replace("]", ", 'O']")
    path.write_text("".join(lines), encoding="utf-8")

    result = export_run(repo, TAG, 1)

    assert result.retrained
    assert ("no predictions for 1 of 12 test rows" if damage == "drop the last row" else "tags for") in result.source
    assert_valid_submission(result.submission, repo / "data")


def test_retrain_uses_the_recorded_train_args_unless_others_are_given(repo, tmp_path):
    night = repo / "runs" / TAG / "night.json"  # the loop records its --train-args there at start
    assert json.loads(night.read_text())["train_args"] == ""
    night.write_text(json.dumps({"train_args": "--sleep 0.01"}))
    shutil.rmtree(predictions(repo, 0).parent)

    recorded = export_run(repo, TAG, 0)
    given = export_run(repo, TAG, 0, out_dir=tmp_path / "given", train_args="--sleep 0.02")

    assert "--sleep 0.01" in recorded.log.read_text() and "night.json" in recorded.source
    assert "--sleep 0.02" in given.log.read_text() and "--sleep 0.01" not in given.log.read_text()
    assert recorded.submission.read_bytes() == given.submission.read_bytes()


def test_errors_are_one_line_and_write_nothing(repo):
    cases = {"nope": (1, r"tag 'nope': no runs .*tags with runs: t\)"),
             TAG: (9, r"results.tsv: tag t has no run 9 \(its runs are 0 to 4\)")}
    for tag, (run, message) in cases.items():
        with pytest.raises(ExportError, match=message):
            export_run(repo, tag, run)
    with pytest.raises(ExportError, match="run 3 of tag t was invalid: train.py does not compile.*no commit"):
        export_run(repo, TAG, 3)
    assert not (repo / "exports").exists()
    with pytest.raises(ExportError, match=r"train.py: cannot write the export there"):
        export_run(repo, TAG, 1, out_dir=repo / "train.py")

    (repo / "data" / "test.jsonl").rename(repo / "test.jsonl.away")
    with pytest.raises(ExportError, match=r"test.jsonl: not found; .*python prepare.py ... --test FILE"):
        export_run(repo, TAG, 1)


def test_a_run_whose_train_py_crashes_again_names_the_log(repo):
    with pytest.raises(ExportError) as error:
        export_run(repo, TAG, 4)  # the crash row: no predictions, and its train.py crashes again
    message = str(error.value)
    log = repo / "exports" / "t-run0004" / "retrain.log"
    assert "\n" not in message and "boom" in message and str(log) in message
    assert "RuntimeError: boom" in log.read_text()
    assert not (repo / "exports" / "t-run0004" / "submission.csv").exists()


def test_export_from_an_archived_tag(repo):
    run_loop(loop_config(repo, tag="u", max_runs=1), NullAgent())
    assert results(repo)[0]["tag"] == "u" and (repo / "runs" / TAG / "results.tsv").is_file()
    assert current_tag(repo) == "u"

    result = export_run(repo, TAG, 2)

    assert result.train_py.read_bytes() == show(repo, f"refs/autoresearch/{TAG}/run-2:train.py")
    assert result.submission.read_bytes() == predictions(repo, 2).read_bytes()


@pytest.mark.slow
def test_export_a_real_minilm_run(tmp_path, prepared_task7):
    """The real train.py and the small bundled encoder: copy the night's predictions, then train them again."""
    data = cut_data(prepared_task7, tmp_path / "data", {"val": 16, "holdout": 8, "test": 4})
    repo = make_repo(tmp_path, data, train_py=None)
    args = "--model minilm --epochs 1 --limit 32 --lr 1e-4"
    run_loop(loop_config(repo, train_args=args, max_runs=1, timeout_s=600), NullAgent())
    assert results(repo)[0]["status"] == "baseline"

    copied = export_run(repo, TAG, 0)
    assert not copied.retrained
    assert copied.train_py.read_bytes() == show(repo, f"{results(repo)[0]['commit']}:train.py")
    assert_valid_submission(copied.submission, repo / "data")

    shutil.rmtree(predictions(repo, 0).parent)
    again = export_run(repo, TAG, 0, out_dir=tmp_path / "again", train_args=args)
    assert again.retrained and "--model minilm" in again.log.read_text() + again.source
    assert_valid_submission(again.submission, repo / "data")
    assert again.submission.read_bytes() == copied.submission.read_bytes()  # same code, seed and data on CPU
