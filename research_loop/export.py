"""Export one run: its train.py (from the run's commit) and an official submission CSV for data/test.jsonl.

The submission is the run's own pred_test.csv when it still covers every test row. Otherwise the run's
train.py is trained again (its first seed, the night's train args) in a temporary folder beside the
prepare.py and evaluate.py of the same commit, in the loop's scrubbed environment.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from git import BadName

from . import ledger
from .gitops import TRAIN_FILE, Git, GitError, run_ref
from .loop import import_file, run_dir
from .runner import run_train_py, stop_on_signals

EXPORTS_DIR = "exports"
SUBMISSION_FILE = "submission.csv"
RETRAIN_LOG = "retrain.log"
PREDICTIONS_FILE = "pred_test.csv"  # what train.py writes for data/test.jsonl
DEFAULT_SEED = 42
FIXED_FILES = ("prepare.py", "evaluate.py")  # train.py imports them: taken from the run's own commit
# Files under runs/<tag>/ that may record the night's --train-args (a "train_args" string), first found wins.
RECORDED_ARGS_FILES = ("night.json", "calibration.json")  # night.json: written by the loop at start
SHOWN_IDS = 3


class ExportError(Exception):
    """A one-line, user-facing reason the run cannot be exported."""


@dataclass
class ExportResult:
    train_py: Path
    submission: Path
    retrained: bool
    source: str  # which run and commit, and where the predictions came from
    commit: str = ""
    rows: int = 0  # test rows in the submission
    log: Path | None = None  # the retrain's log, when it retrained

    def lines(self) -> list[str]:
        """What was written, for the CLI to print."""
        lines = [f"wrote {self.train_py}", f"wrote {self.submission} ({self.rows} test rows)", self.source]
        if self.log is not None:
            lines.append(f"training log: {self.log}")
        return lines


def export_run(repo: Path, tag: str, run: int, out_dir: Path | None = None, train_args: str | None = None,
               timeout_s: float | None = None, progress: Callable[[str], None] | None = None) -> ExportResult:
    """Write run `run` of `tag`'s train.py and submission CSV to out_dir (default exports/<tag>-runNNNN/).

    train_args (None: the ones the night recorded, else none) and timeout_s (None: no limit) only matter
    when the run's predictions are gone and it is trained again; progress gets a line before that starts."""
    repo = Path(repo).resolve()
    row, results_path = find_row(repo, tag, run)
    commit = row["commit"]
    try:
        git_repo = Git(repo).repo
    except GitError as exc:
        raise ExportError(str(exc)) from None
    files = commit_files(git_repo, commit, tag, run)
    test_rows = load_test_rows(repo)
    evaluate = import_file(repo / "evaluate.py", "evaluate")

    out_dir = Path(out_dir) if out_dir is not None else repo / EXPORTS_DIR / f"{tag}-run{run:04d}"
    train_py, submission, log = out_dir / TRAIN_FILE, out_dir / SUBMISSION_FILE, out_dir / RETRAIN_LOG
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        train_py.write_bytes(files[TRAIN_FILE])
        for stale in (submission, log):  # an older export's files never sit beside this train.py
            stale.unlink(missing_ok=True)
    except OSError as exc:
        raise ExportError(f"{out_dir}: cannot write the export there ({exc.strerror or exc})") from None
    score = f", strict F1 {row['strict_f1']}" if row.get("strict_f1") else ""
    source = f"tag {tag} run {run} ({row['status']}{score}), commit {commit[:10]}"

    saved = run_dir(repo, tag, run) / PREDICTIONS_FILE
    problem = coverage_problem(saved, test_rows, evaluate) if saved.is_file() else f"{_shown(saved, repo)} is gone"
    if problem is None:
        shutil.copyfile(saved, submission)
        return ExportResult(train_py, submission, False, f"{source}; predictions copied from {_shown(saved, repo)}",
                            commit=commit, rows=len(test_rows))

    seed = first_seed(row, results_path, run)
    args, args_origin = chosen_train_args(repo, tag, train_args)
    if progress is not None:
        progress(f"{problem}: training run {run}'s train.py again (seed {seed}, {args_origin}); "
                 f"log: {log}")
    retrain(repo, files, run, seed, args, offline=row["status"] != "baseline", log=log,
            timeout_s=timeout_s, evaluate=evaluate, test_rows=test_rows, submission=submission)
    return ExportResult(train_py, submission, True,
                        f"{source}; trained again (seed {seed}, {args_origin}) because {problem}",
                        commit=commit, rows=len(test_rows), log=log)


def current_tag(repo: Path) -> str | None:
    """The tag to export from when none is given: the checked-out autoresearch/<tag> branch's, else
    results.tsv's."""
    try:
        branch = Git(repo).current_branch() or ""
    except GitError:
        branch = ""
    if branch.startswith("autoresearch/"):
        return branch.removeprefix("autoresearch/")
    return ledger.tag_of(ledger.read_rows(Path(repo) / ledger.RESULTS_FILE))


# ----- The run's row, commit and test rows -----


def known_tags(repo: Path) -> list[str]:
    """Tags with a results.tsv: the current one and those archived under runs/<tag>/."""
    current = ledger.tag_of(ledger.read_rows(repo / ledger.RESULTS_FILE))
    archived = [path.parent.name for path in sorted((repo / "runs").glob(f"*/{ledger.RESULTS_FILE}"))]
    return sorted({*archived, *([current] if current else [])})


def find_row(repo: Path, tag: str, run: int) -> tuple[dict, Path]:
    """The run's results.tsv row (from the archived runs/<tag>/results.tsv when results.tsv is another
    tag's) and the file it came from."""
    results_path = repo / ledger.RESULTS_FILE
    if ledger.tag_of(ledger.read_rows(results_path)) != tag:
        results_path = repo / "runs" / tag / ledger.RESULTS_FILE
    rows = [row for row in ledger.read_rows(results_path) if row.get("tag") == tag]
    if not rows:
        known = ", ".join(known_tags(repo)) or "none yet"
        raise ExportError(f"tag {tag!r}: no runs in results.tsv or runs/{tag}/results.tsv (tags with runs: {known})")
    matches = [row for row in rows if row.get("run", "").strip() == str(run)]
    if not matches:
        numbers = sorted(int(row["run"]) for row in rows if row.get("run", "").strip().isdigit())
        raise ExportError(f"{_shown(results_path, repo)}: tag {tag} has no run {run} "
                          f"(its runs are {numbers[0]} to {numbers[-1]})" if numbers else
                          f"{_shown(results_path, repo)}: tag {tag} has no run {run}")
    row = matches[-1]
    if not row.get("commit"):
        why = f": {row['note']}" if row.get("note") else ""
        raise ExportError(f"run {run} of tag {tag} was {row.get('status') or 'never run'}{why}; it has no commit, "
                          "so there is no train.py to export")
    return row, results_path


def commit_files(git_repo, commit: str, tag: str, run: int) -> dict[str, bytes]:
    """train.py, prepare.py and evaluate.py as they are at the run's commit (never the working tree's)."""
    try:
        tree = git_repo.commit(commit).tree
    except (ValueError, BadName):
        raise ExportError(f"run {run}'s commit {commit[:10]} is not in this repository (the loop keeps "
                          f"it at {run_ref(tag, run)}; was the repository cloned without those refs?)") from None
    files = {}
    for name in (TRAIN_FILE, *FIXED_FILES):
        try:
            files[name] = (tree / name).data_stream.read()
        except KeyError:
            raise ExportError(f"run {run}'s commit {commit[:10]} has no {name}") from None
    return files


def load_test_rows(repo: Path) -> list[dict]:
    """data/test.jsonl's rows, or a one-line error saying how to prepare them."""
    path = repo / "data" / "test.jsonl"
    if not path.is_file():
        raise ExportError(f"{path}: not found; add the test rows with `python prepare.py ... --test FILE` "
                          "(the options that prepared this data, plus --test)")
    prepare = import_file(repo / "prepare.py", "prepare")
    try:
        rows = prepare.load_split("test", repo / "data")
    except prepare.DataError as exc:
        raise ExportError(str(exc)) from None
    if not rows:
        raise ExportError(f"{path}: no rows")
    return rows


def coverage_problem(path: Path, test_rows: list[dict], evaluate) -> str | None:
    """Why the CSV is not a full submission for test_rows (an id missing or extra, a tag count that is
    not the row's token count, an unreadable cell), or None."""
    try:
        predicted = evaluate.read_tags(path)
    except evaluate.ScoreError as exc:
        return str(exc)
    expected = {row.get("source_id", row["id"]): len(row["tokens"]) for row in test_rows}
    missing = [row_id for row_id in expected if row_id not in predicted]
    if missing:
        return f"{path}: no predictions for {len(missing)} of {len(expected)} test rows ({_some(missing)})"
    extra = [row_id for row_id in predicted if row_id not in expected]
    if extra:
        return f"{path}: {len(extra)} ids that are not in data/test.jsonl ({_some(extra)})"
    wrong = [row_id for row_id, count in expected.items() if len(predicted[row_id]) != count]
    if wrong:
        first = wrong[0]
        more = f" (and {len(wrong) - 1} more rows)" if len(wrong) > 1 else ""
        return f"{path}: row {first}: {len(predicted[first])} tags for {expected[first]} tokens{more}"
    return None


# ----- Training again -----


def first_seed(row: dict, results_path: Path, run: int) -> int:
    """The seed whose outputs the run folder itself holds (the seeds column's first), default 42."""
    seeds = [seed.strip() for seed in row.get("seeds", "").split(",") if seed.strip()]
    if not seeds:
        return DEFAULT_SEED
    try:
        return int(seeds[0])
    except ValueError:
        raise ExportError(f"{results_path}: run {run}: seeds: {row['seeds']!r} is not a list of integers") from None


def recorded_train_args(repo: Path, tag: str) -> tuple[str, Path] | None:
    """The night's --train-args and the file that recorded them, when one did."""
    for name in RECORDED_ARGS_FILES:
        path = repo / "runs" / tag / name
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(recorded, dict) and isinstance(recorded.get("train_args"), str):
            return recorded["train_args"], path
    return None


def chosen_train_args(repo: Path, tag: str, given: str | None) -> tuple[str, str]:
    """The train args for a retrain (given ones win over recorded ones), and in words which and whence."""
    recorded = recorded_train_args(repo, tag)
    if given is not None:
        args, origin = given, "given"
    elif recorded is not None:
        args, origin = recorded[0], f"recorded in {_shown(recorded[1], repo)}"
    else:
        return "", f"no train args (none recorded for tag {tag})"
    try:
        shlex.split(args)
    except ValueError as exc:
        raise ExportError(f"train args {args!r} ({origin}): {exc}") from None
    return args, f"train args {args!r} ({origin})" if args else f"no train args ({origin})"


def retrain(repo: Path, files: dict[str, bytes], run: int, seed: int, train_args: str, offline: bool,
            log: Path, timeout_s: float | None, evaluate, test_rows: list[dict], submission: Path) -> None:
    """Run the commit's train.py in a temporary folder (its prepare.py and evaluate.py beside it) on the
    repository's data, then copy its pred_test.csv to submission once it covers every test row."""
    work = Path(tempfile.mkdtemp(prefix="ner-autoresearch-export-"))
    try:
        for name, data in files.items():
            (work / name).write_bytes(data)
        # --data last: the submission is checked against this repository's data, whatever the args say.
        with stop_on_signals() as stopped:
            outcome = run_train_py(work, work / "out", seed, train_args, offline=offline,
                                   timeout_s=timeout_s or math.inf, log_path=log,
                                   extra_args=("--data", str(repo / "data")), abort=stopped)
        if outcome.kind == "aborted":
            raise ExportError(f"stopped by Ctrl-C while training run {run} again; no submission written (log: {log})")
        if outcome.kind != "ok":
            raise ExportError(f"training run {run} again failed ({outcome.error_line()}); see {log}")
        produced = work / "out" / PREDICTIONS_FILE
        if not produced.is_file():
            raise ExportError(f"training run {run} again wrote no {PREDICTIONS_FILE}; see {log}")
        problem = coverage_problem(produced, test_rows, evaluate)
        if problem is not None:
            raise ExportError(f"training run {run} again gave an unusable {PREDICTIONS_FILE}: "
                              f"{problem.replace(str(produced), PREDICTIONS_FILE)}; see {log}")
        shutil.copyfile(produced, submission)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _some(ids: list[str]) -> str:
    return ", ".join(ids[:SHOWN_IDS]) + (", ..." if len(ids) > SHOWN_IDS else "")


def _shown(path: Path, repo: Path) -> str:
    """A path relative to the repository when it is inside it."""
    try:
        return str(path.relative_to(repo))
    except ValueError:
        return str(path)
