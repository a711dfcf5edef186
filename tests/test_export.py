"""`export`: a run's train.py from its commit and a submission CSV for the test rows, copied from a trial or
trained again as a sandboxed job."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from loop_helpers import (
    FAKE_TRAIN_PY,
    ScriptedAgent,
    branch_runs,
    git,
    loop_config,
    make_repo,
    results,
    set_constant,
)

import evaluate
from evaluate import read_tags
from research_loop.evaluation.acceptance import Confirm, Monotonic
from research_loop.export import ExportedRun, ExportError, coverage_problem, export_run, saved_predictions
from research_loop.loop import run_loop
from research_loop.night.folders import Workspace
from research_loop.night.lock import LoopLock
from research_loop.preparation import build

TAG = "t"
NIGHT = ["baseline", "keep", "discard", "invalid", "crash"]
SEEDS = (42, 43)
TRAIN_OPTIONS = ("--limit", "64")


@pytest.fixture(scope="module")
def night(tmp_path_factory, prepared_task7):
    """A finished confirm night (2 seeds, --limit 64) whose fake train.py writes pred_test.csv when its view
    has the test rows (the baseline's first seed, a confirmed run's second): baseline, keep, discard (at the
    one-seed screen, so no test predictions), invalid, crash."""
    root = tmp_path_factory.mktemp("export_night")
    repo = make_repo(root, prepared_task7, train_py=set_constant(FAKE_TRAIN_PY, "PREDICT_TEST", True))
    script = [("QUALITY", 0.7), ("QUALITY", 0.6), "this is not python (", ("ACTION", "crash")]
    run_loop(
        loop_config(
            repo, TAG, max_runs=len(NIGHT), policy=Confirm(trials=2), seeds=SEEDS, train_options=TRAIN_OPTIONS
        ),
        ScriptedAgent(script),
    )
    assert [row["status"] for row in results(repo)] == NIGHT
    return repo


@pytest.fixture
def repo(night, tmp_path):
    """A private copy of the night's repository (tests delete run folders and files)."""
    copy = Path(shutil.copytree(night, tmp_path / "repo", symlinks=True))
    # The copy's data is prepared too (the stamp is keyed by the data folder's path).
    build.write_prepared_stamp(copy / "data", copy / "data" / "manifest.json")
    return copy


def show(repo: Path, spec: str) -> bytes:
    """`git show SPEC` byte for byte."""
    return subprocess.run(["git", "show", spec], cwd=repo, check=True, capture_output=True).stdout


def predictions(repo: Path, run: int, seed: int | None = None) -> Path:
    folder = repo / "runs" / TAG / f"{run:04d}"
    return (folder / f"seed-{seed}" if seed is not None else folder) / "pred_test.csv"


def official_rows(repo: Path) -> list[dict]:
    return [
        json.loads(line) for line in (repo / "data" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    ]


def assert_valid_submission(path: Path, repo: Path) -> None:
    """The official header, every test row once by its official ID, one valid tag per token."""
    assert path.read_text(encoding="utf-8").splitlines()[0] == "ID,predicted_ner_tags"
    tags = read_tags(path)
    rows = official_rows(repo)
    assert sorted(tags) == sorted(row["source_id"] for row in rows)
    assert all(len(tags[row["source_id"]]) == len(row["tokens"]) for row in rows)


def test_export_a_kept_run_copies_its_trial_predictions(repo):
    commit = results(repo)[1]["commit"]
    lines = []
    result = export_run(repo, TAG, 1, progress=lines.append)

    assert result.train_py == repo / "exports" / "t-run0001" / "train.py"
    assert result.train_py.read_bytes() == show(repo, f"{commit}:train.py")
    assert (
        not result.retrained and result.log is None and result.rows == len(official_rows(repo)) and not lines
    )
    # The confirmed run's second seed predicted the test rows; its file is the submission, byte for byte.
    assert not predictions(repo, 1).exists()
    assert result.submission.read_bytes() == predictions(repo, 1, 43).read_bytes()
    assert_valid_submission(result.submission, repo)
    assert "run 1 (keep, strict F1" in result.source and commit[:10] in result.source
    assert "copied from runs/t/0001/seed-43/pred_test.csv" in result.source
    assert any(str(result.submission) in line for line in result.lines())
    assert git(repo, "status", "--porcelain") == ""  # exports/ is ignored


def test_export_a_discarded_run_trains_its_ref_again_with_the_nights_options(repo):
    working = (repo / "train.py").read_bytes()
    assert branch_runs(repo, TAG) == [1]  # the branch does not hold run 2
    assert not list((repo / "runs" / TAG / "0002").rglob("pred_test.csv"))  # discarded at the one-seed screen
    lines = []

    result = export_run(repo, TAG, 2, progress=lines.append)

    assert result.train_py.read_bytes() == show(repo, f"refs/autoresearch/{TAG}/run-2:train.py")
    assert "QUALITY = 0.6" in result.train_py.read_text() and result.train_py.read_bytes() != working
    assert result.retrained and result.sandbox in ("bwrap", "unshare")
    assert_valid_submission(result.submission, repo)
    # The runs predict differently.
    assert result.submission.read_bytes() != predictions(repo, 1, 43).read_bytes()
    # The first trial's seed and the night's train.py options, in a sandboxed job; the user is told first.
    log = result.log.read_text()
    assert result.log == repo / "exports" / "t-run0002" / "retrain.log"
    assert "--seed 42" in log and "--limit 64" in log
    assert "no pred_test.csv in runs/t/0002 or its trial folders" in result.source
    assert (
        len(lines) == 1
        and "training run 2's train.py again (seed 42, train.py options --limit 64" in lines[0]
    )
    assert "UNSANDBOXED" not in " ".join(result.lines())
    # Nothing else moved: the working train.py, the tree, the run folder.
    assert (repo / "train.py").read_bytes() == working and git(repo, "status", "--porcelain") == ""
    assert not list((repo / "runs" / TAG / "0002").rglob("pred_test.csv"))


def test_export_trains_again_when_the_run_folder_is_gone_unsandboxed_when_allowed(repo):
    saved = predictions(repo, 1, 43).read_bytes()
    shutil.rmtree(predictions(repo, 1).parent)
    with pytest.raises(ExportError, match="--sandbox none is only allowed with --no-sandbox"):
        export_run(repo, TAG, 1, sandbox="none")
    lines = []

    result = export_run(repo, TAG, 1, sandbox="none", allow_unsandboxed=True, progress=lines.append)

    assert result.retrained and "runs/t/0001 is gone" in result.source
    assert result.submission.read_bytes() == saved  # the fake's test predictions do not depend on the seed
    assert result.sandbox == "none" and "UNSANDBOXED" in result.lines()[-1] and "UNSANDBOXED" in lines[0]
    assert not predictions(repo, 1).parent.exists()  # nothing written back into runs/


def test_predictions_that_do_not_cover_the_test_rows_are_trained_again(repo):
    path = predictions(repo, 0)
    path.write_text(
        "".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:-1]), encoding="utf-8"
    )

    result = export_run(repo, TAG, 0)

    assert (
        result.retrained
        and f"runs/t/0000/pred_test.csv: no predictions for 1 of {len(official_rows(repo))} test rows"
        in result.source
    )
    assert_valid_submission(result.submission, repo)


def test_what_makes_a_trial_file_unfit_is_named(repo, tmp_path):
    rows = official_rows(repo)[:3]  # three rows are enough (reading all 578 takes seconds)
    lines = predictions(repo, 0).read_text(encoding="utf-8").splitlines(keepends=True)[:4]
    damaged = {
        "nothing": lines,
        "one tag too many": [*lines[:3], lines[3].replace("]", ", 'O']")],
        "an id too many": [*lines, "extra_1,['O']\n"],
        "a row too few": lines[:3],
        "a broken cell": [*lines[:3], lines[3].split(",")[0] + ",['O'\n"],
    }
    expected = {
        "one tag too many": f"row {rows[2]['source_id']}: {len(rows[2]['tokens']) + 1} tags for",
        "an id too many": "1 ids that are not in data/test.jsonl (extra_1)",
        "a row too few": f"no predictions for 1 of 3 test rows ({rows[2]['source_id']})",
        "a broken cell": f"row {rows[2]['source_id']}",
    }
    for name, content in damaged.items():
        path = tmp_path / "pred_test.csv"
        path.write_text("".join(content), encoding="utf-8")
        problem = coverage_problem(path, rows, evaluate)
        if name == "nothing":
            assert problem is None
        else:
            assert problem.startswith(f"{path}: ") and expected[name] in problem, (name, problem)

    # A trial file that another commit wrote is never taken for this run's.
    trial = predictions(repo, 0).parent / "trial.json"
    trial.write_text(json.dumps({**json.loads(trial.read_text()), "commit": "f" * 40}))
    run = ExportedRun(0, results(repo)[0]["commit"], None, "")
    found, problem = saved_predictions(Workspace(repo, TAG), run, rows, evaluate, tmp_path / "submission.csv")
    assert found is None and problem == "runs/t/0000/pred_test.csv is from another commit (ffffffffff)"
    assert not (tmp_path / "submission.csv").exists()


def test_errors_are_one_line_and_write_nothing(repo):
    cases = {
        "nope": (1, r"^tag 'nope': no runs in results.tsv or runs/nope/results.tsv \(tags with runs: t\)$"),
        TAG: (9, r"^results.tsv: tag t has no run 9 \(its runs are 0 to 4\)$"),
        "../x": (1, r"^--tag '\.\./x': use letters"),
    }
    for tag, (run, message) in cases.items():
        with pytest.raises(ExportError, match=message):
            export_run(repo, tag, run)
    with pytest.raises(
        ExportError, match=r"^run 3 of tag t was invalid: train.py does not compile.*no commit"
    ):
        export_run(repo, TAG, 3)
    assert not (repo / "exports").exists()
    with pytest.raises(ExportError, match=r"train.py: cannot write the export there"):
        export_run(repo, TAG, 1, out_dir=repo / "train.py")

    (repo / "data" / "test.jsonl").rename(repo / "test.jsonl.away")
    with pytest.raises(ExportError, match=r"test.jsonl: not found; .*python prepare.py ... --test FILE"):
        export_run(repo, TAG, 1)
    (repo / "test.jsonl.away").rename(repo / "data" / "test.jsonl")

    commit = results(repo)[1]["commit"]
    (repo / "results.tsv").write_text((repo / "results.tsv").read_text().replace(commit, "0" * 40))
    with pytest.raises(
        ExportError,
        match=r"^run 1's commit 0000000000 is not in this repository \(the loop "
        r"keeps it at refs/autoresearch/t/run-1;",
    ):
        export_run(repo, TAG, 1)
    assert not (repo / "exports").exists()


def test_a_retrain_waits_for_no_loop_but_a_copy_does_not(repo):
    lock = LoopLock(repo, "other")
    lock.acquire()
    try:
        assert not export_run(repo, TAG, 1).retrained
        with pytest.raises(ExportError, match=r"`agent_loop.py run` is running .*night other.*training run 2 again"):
            export_run(repo, TAG, 2)
    finally:
        lock.release()
    assert not (repo / "exports" / "t-run0002" / "submission.csv").exists()


def test_a_run_whose_train_py_crashes_again_names_the_log(repo):
    with pytest.raises(ExportError) as error:
        export_run(repo, TAG, 4)  # the crash row: no predictions, and its train.py crashes again
    message = str(error.value)
    log = repo / "exports" / "t-run0004" / "retrain.log"
    assert message.startswith("training run 4 again failed (crash: exit code 1: RuntimeError: boom")
    assert "\n" not in message and str(log) in message
    assert "RuntimeError: boom" in log.read_text()
    assert not (repo / "exports" / "t-run0004" / "submission.csv").exists()


def test_a_candidate_without_a_row_is_exported_from_its_ref(repo):
    commit = git(repo, "rev-parse", f"refs/autoresearch/{TAG}/run-2")
    git(repo, "update-ref", f"refs/autoresearch/{TAG}/run-7", commit)  # committed, then the loop was killed

    result = export_run(repo, TAG, 7)

    assert "run 7 (not in results.tsv; committed at refs/autoresearch/t/run-7)" in result.source
    assert result.retrained and "--seed 42" in result.log.read_text()
    assert result.train_py.read_bytes() == show(repo, f"{commit}:train.py")


def test_export_from_an_archived_tag_through_the_cli(repo):
    run_loop(loop_config(repo, "u", max_runs=1, policy=Monotonic()), ScriptedAgent([]))
    assert results(repo)[0]["tag"] == "u" and (repo / "runs" / TAG / "results.tsv").is_file()

    done = subprocess.run(
        [sys.executable, "agent_loop.py", "export", "1", "--tag", TAG],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    submission = repo / "exports" / "t-run0001" / "submission.csv"
    assert f"wrote {submission} ({len(official_rows(repo))} test rows)" in done.stdout
    assert submission.read_bytes() == predictions(repo, 1, 43).read_bytes()


def cut_test_rows(prepared: Path, folder: Path, keep: int) -> Path:
    """A copy of the prepared data with only the first `keep` test rows (the manifest updated to match)."""
    shutil.copytree(prepared, folder)
    lines = (folder / "test.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:keep]
    (folder / "test.jsonl").write_text("".join(lines), encoding="utf-8")
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"]["test.jsonl"] = hashlib.sha256((folder / "test.jsonl").read_bytes()).hexdigest()
    manifest["splits"]["test"]["rows"] = keep
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return folder


@pytest.mark.slow
def test_export_a_real_minilm_run(tmp_path, prepared_task7):
    """The real train.py and the small bundled encoder: copy the night's predictions, then train them again."""
    train_py = (Path(__file__).resolve().parents[1] / "train.py").read_text()
    for name, value in (("MODEL_NAME", "minilm"), ("EPOCHS", 1), ("LEARNING_RATE", 1e-4)):
        train_py = set_constant(train_py, name, value)
    repo = make_repo(tmp_path, cut_test_rows(prepared_task7, tmp_path / "data", 4), train_py=train_py)
    run_loop(
        loop_config(
            repo,
            TAG,
            max_runs=1,
            policy=Confirm(trials=2),
            seeds=SEEDS,
            timeout_s=600,
            train_options=("--limit", "32"),
        ),
        ScriptedAgent([]),
    )
    assert results(repo)[0]["status"] == "baseline"

    copied = export_run(repo, TAG, 0)
    assert not copied.retrained
    assert copied.train_py.read_bytes() == show(repo, f"{results(repo)[0]['commit']}:train.py")
    assert_valid_submission(copied.submission, repo)

    shutil.rmtree(predictions(repo, 0).parent)
    again = export_run(repo, TAG, 0, out_dir=tmp_path / "again")
    assert again.retrained and "train.py options --limit 32" in again.source
    assert "epochs: 1.00" in again.log.read_text()
    assert_valid_submission(again.submission, repo)
    assert again.submission.read_bytes() == copied.submission.read_bytes()  # same code, seed and data on CPU


def test_a_commit_older_than_a_fixed_file_exports_without_it_and_one_that_imports_it_must_have_it(tmp_path):
    from research_loop.export import commit_files
    from research_loop.records.gitops import Git

    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("prepare.py", "evaluate.py"):
        (repo / name).write_text(f"# {name}\n")
    (repo / "train.py").write_text("from prepare import load_split\n")  # from before runtime.py existed
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "t@e"], ["config", "user.name", "t"],
                 ["add", "-A"], ["commit", "-qm", "old"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    git = Git(repo, tmp_path / "store")
    old = git.head_sha()
    files = commit_files(git, ExportedRun(1, old, None, ""), "t")
    assert sorted(files) == ["evaluate.py", "prepare.py", "train.py"]
    (repo / "train.py").write_text("from runtime import main\n")  # needs runtime.py, which the commit lacks
    subprocess.run(["git", "commit", "-qam", "new"], cwd=repo, check=True)
    with pytest.raises(ExportError, match=r"has no runtime.py"):
        commit_files(git, ExportedRun(2, git.head_sha(), None, ""), "t")
