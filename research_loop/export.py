"""Export one run: its train.py (from the run's commit) and an official submission CSV for data/test.jsonl,
into exports/<tag>-runNNNN/.

The submission is a trial's own pred_test.csv when one of the run's trial folders has one that covers every
test row. Otherwise the run's train.py is trained again as one sandboxed job like the loop's: the first
trial's seed and fold, the night's train.py options and run budget (night.json), the prepare.py and
evaluate.py of the run's commit, and the test rows in its data view.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from git import BadName

from research_loop.evaluation.dataviews import DataViews
from research_loop.evaluation.scoring import import_file
from research_loop.evaluation.trial import TrialOutcome
from research_loop.execution import sandbox as sandboxes
from research_loop.execution.jobs import Job, run_job
from research_loop.night.folders import Workspace, WorkspaceError, check_tag
from research_loop.night.lock import LockError, LoopLock
from research_loop.night.opening import private_folders
from research_loop.night.stopping import abort_on_signals
from research_loop.records.gitops import TRAIN_FILE, Git, GitError, run_ref
from research_loop.records.integrity import FIXED_FILES
from research_loop.records.ledger import RESULTS_FILE, read_records, tag_of
from research_loop.records.run_record import RecordError, RunRecord

from .model_cache import ModelCacheError, ensure_cached, model_name
from .safe_io import open_no_follow, read_bytes, write_atomically

EXPORTS_DIR = "exports"
SUBMISSION_FILE = "submission.csv"
RETRAIN_LOG = "retrain.log"
PREDICTIONS_FILE = "pred_test.csv"  # what train.py writes for data/test.jsonl
DEFAULT_SEED = 42
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
    sandbox: str = ""  # the retrain's sandbox backend ("none": UNSANDBOXED)

    def lines(self) -> list[str]:
        """What was written, for the CLI to print."""
        lines = [f"wrote {self.train_py}", f"wrote {self.submission} ({self.rows} test rows)", self.source]
        if self.log is not None:
            lines.append(f"training log: {self.log}")
        if self.sandbox == "none":
            lines.append("UNSANDBOXED: the retrain ran train.py with your user's powers")
        return lines


@dataclass
class ExportedRun:
    """The run as the night left it: its commit, and its results.tsv row when it has one."""

    run: int
    commit: str
    record: RunRecord | None
    where: str  # which file or ref named the commit


def export_run(repo: Path, tag: str, run: int, out_dir: Path | None = None, sandbox: str = "auto",
               allow_unsandboxed: bool = False, progress: Callable[[str], None] | None = None,
               timeout_s: float | None = None) -> ExportResult:
    """Write run `run` of `tag`'s train.py and submission CSV to out_dir (default exports/<tag>-runNNNN/).

    sandbox, allow_unsandboxed and timeout_s (None: no limit) matter only when no trial's predictions cover
    the test rows and the run is trained again; progress gets a line before that starts. Ctrl-C during the
    retrain kills it and raises KeyboardInterrupt (no submission written)."""
    try:
        ws = Workspace(Path(repo).resolve(), check_tag(tag))
    except WorkspaceError as exc:
        raise ExportError(str(exc)) from None
    try:
        git = Git(ws.repo, ws.store / "git")
    except GitError as exc:
        raise ExportError(str(exc)) from None
    exported = find_run(ws, git, run)
    files = commit_files(git, exported, ws.tag)
    evaluate, prepare = fixed_modules(ws.repo)
    test_rows = load_test_rows(ws.repo, prepare)

    out_dir = Path(out_dir) if out_dir is not None else ws.repo / EXPORTS_DIR / f"{ws.tag}-run{run:04d}"
    train_py, submission, log = out_dir / TRAIN_FILE, out_dir / SUBMISSION_FILE, out_dir / RETRAIN_LOG
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(train_py, files[TRAIN_FILE])
        for stale in (submission, log):  # an older export's files never sit beside this train.py
            stale.unlink(missing_ok=True)
    except OSError as exc:
        raise ExportError(f"{out_dir}: cannot write the export there ({exc.strerror or exc})") from None
    record = exported.record
    score = f", strict F1 {record.strict_f1:.4f}" if record is not None and record.strict_f1 is not None else ""
    status = record.status.value if record is not None else f"not in results.tsv; {exported.where}"
    source = f"tag {ws.tag} run {run} ({status}{score}), commit {exported.commit[:10]}"
    result = ExportResult(train_py, submission, False, source, commit=exported.commit, rows=len(test_rows))

    saved, problem = saved_predictions(ws, exported, test_rows, evaluate, submission)
    if saved is not None:
        result.source += f"; predictions copied from {shown(saved, ws.repo)}"
        return result

    night = ws.night()
    seed, fold = first_trial(record, night)
    options = tuple(str(option) for option in night.get("train_options") or ())
    backend, unsandboxed = choose_backend(sandbox, allow_unsandboxed, run)
    job, private = retrain_job(ws, files, run, seed, fold, options, night.get("run_budget_s"), timeout_s)
    try:
        cached = ensure_cached(model_name(job.train_py))
    except ModelCacheError as exc:
        raise ExportError(str(exc)) from None
    plan = f"seed {seed}" + (f", fold {fold}" if fold is not None else "") + \
        (f", train.py options {' '.join(options)}" if options else "") + f"; sandbox {backend}"
    if progress is not None:
        progress(f"{problem}: {unsandboxed}training run {run}'s train.py again ({plan}); log: {log}"
                 + (f"; {cached}" if cached else ""))
    produced = run_retrain(ws, job, private, backend, run, log)
    failure = install_submission(produced, submission, test_rows, evaluate, PREDICTIONS_FILE)
    if failure is not None:
        raise ExportError(f"training run {run} again gave an unusable {PREDICTIONS_FILE}: {failure}; see {log}")
    result.retrained, result.log, result.sandbox = True, log, backend
    result.source += f"; trained again ({plan}) because {problem}"
    return result


# ----- The run, its commit and the test rows -----


def known_tags(repo: Path) -> list[str]:
    """Tags with rows: results.tsv's and those archived under runs/<tag>/."""
    current = tag_of(repo / RESULTS_FILE)
    archived = [path.parent.name for path in (repo / "runs").glob(f"*/{RESULTS_FILE}")]
    return sorted({*archived, *([current] if current else [])})


def find_run(ws: Workspace, git: Git, run: int) -> ExportedRun:
    """The run's commit: its results.tsv row's (results.tsv, or the tag's archived copy), else its
    refs/autoresearch/<tag>/run-N ref (a candidate the loop committed but did not log)."""
    results_path = ws.results_file()
    try:
        records = read_records(results_path, ws.tag)
    except (RecordError, OSError) as exc:
        raise ExportError(str(exc)) from None
    refs = git.run_refs(ws.tag)
    if not records and not refs:
        known = ", ".join(known_tags(ws.repo)) or "none yet"
        raise ExportError(f"tag {ws.tag!r}: no runs in {RESULTS_FILE} or runs/{ws.tag}/{RESULTS_FILE} "
                          f"(tags with runs: {known})")
    matches = [record for record in records if record.run == run]
    if matches:
        record = matches[-1]
        if record.commit:
            return ExportedRun(run, record.commit, record, shown(results_path, ws.repo))
        why = f": {record.note}" if record.note else ""
        raise ExportError(f"run {run} of tag {ws.tag} was {record.status.value}{why}; it has no commit, so there "
                          "is no train.py to export")
    if run in refs:
        return ExportedRun(run, refs[run], None, f"committed at {run_ref(ws.tag, run)}")
    numbers = sorted({record.run for record in records} | set(refs))
    raise ExportError(f"{shown(results_path, ws.repo)}: tag {ws.tag} has no run {run} "
                      f"(its runs are {numbers[0]} to {numbers[-1]})")


def commit_files(git: Git, exported: ExportedRun, tag: str) -> dict[str, bytes]:
    """train.py, prepare.py and evaluate.py as they are at the run's commit (never the working tree's)."""
    commit, run = exported.commit, exported.run
    missing = ExportError(f"run {run}'s commit {commit[:10]} is not in this repository (the loop keeps it at "
                          f"{run_ref(tag, run)}; was the repository cloned without those refs?)")
    if not git.exists(commit):
        raise missing
    files = {}
    for name in (TRAIN_FILE, *FIXED_FILES):
        try:
            files[name] = git.show_bytes(commit, name)
        except KeyError:
            if not imports(files[TRAIN_FILE], Path(name).stem):  # older than that fixed file: not needed
                continue
            raise ExportError(f"run {run}'s commit {commit[:10]} has no {name}") from None
        except (ValueError, BadName):  # a full sha that names no object passes exists()
            raise missing from None
    return files


def imports(train_py: bytes, module: str) -> bool:
    """Whether a train.py imports `module` (a fixed file's stem) at the top of a line."""
    return re.search(rf"^\s*(from|import)\s+{re.escape(module)}\b", train_py.decode("utf-8", "replace"),
                     re.MULTILINE) is not None


def fixed_modules(repo: Path):
    """The repository's evaluate.py (its readers check a submission) and prepare.py (reads test.jsonl)."""
    for name in FIXED_FILES:
        if not (repo / name).is_file():
            raise ExportError(f"{repo / name}: not found; is this the ner-autoresearch repository?")
    return import_file(repo / "evaluate.py", "evaluate"), import_file(repo / "prepare.py", "prepare")


def load_test_rows(repo: Path, prepare) -> list[dict]:
    """data/test.jsonl's rows, or a one-line error saying how to prepare them."""
    path = repo / "data" / "test.jsonl"
    if not path.is_file():
        raise ExportError(f"{path}: not found; add the test rows with `python prepare.py ... --test FILE` "
                          "(the options that prepared this data, plus --test)")
    try:
        rows = prepare.load_split("test", repo / "data")
    except (prepare.DataError, ValueError) as exc:
        raise ExportError(f"{path}: unreadable ({exc})") from None
    if not rows:
        raise ExportError(f"{path}: no rows")
    return rows


# ----- The predictions: a trial's, or trained again -----


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


def install_submission(data: bytes, submission: Path, test_rows: list[dict], evaluate, name: str) -> str | None:
    """Write data as the submission when it covers every test row; else write nothing and say why
    (naming the file as `name`)."""
    temporary = submission.with_name(f".{submission.name}.tmp")
    write_atomically(temporary, data)
    problem = coverage_problem(temporary, test_rows, evaluate)
    if problem is not None:
        temporary.unlink(missing_ok=True)
        return problem.replace(str(temporary), name)
    os.replace(temporary, submission)
    return None


def trial_folders(ws: Workspace, run: int) -> list[Path]:
    """The run's trial folders that exist: the run folder (its first trial), then seed-<s>/ and fold-<k>/."""
    folder = ws.run_dir(run)
    if not folder.is_dir():
        return []
    return [folder, *sorted(folder.glob("seed-*")), *sorted(folder.glob("fold-*"))]


def saved_predictions(ws: Workspace, exported: ExportedRun, test_rows: list[dict], evaluate,
                      submission: Path) -> tuple[Path | None, str]:
    """The first trial pred_test.csv of the run's commit that covers every test row, copied to the
    submission; else None and why none did."""
    folders = trial_folders(ws, exported.run)
    problems = []
    for folder in folders:
        path = folder / PREDICTIONS_FILE
        if not path.is_file():
            continue
        outcome = TrialOutcome.load(folder)
        if outcome is not None and outcome.commit and outcome.commit != exported.commit:
            problems.append(f"{shown(path, ws.repo)} is from another commit ({outcome.commit[:10]})")
            continue
        try:
            data = read_bytes(path)
        except OSError as exc:
            problems.append(f"{shown(path, ws.repo)}: unreadable ({exc})")
            continue
        problem = install_submission(data, submission, test_rows, evaluate, shown(path, ws.repo))
        if problem is None:
            return path, ""
        problems.append(problem)
    if problems:
        return None, problems[0]
    if not folders:
        return None, f"{shown(ws.run_dir(exported.run), ws.repo)} is gone"
    return None, f"no {PREDICTIONS_FILE} in {shown(folders[0], ws.repo)} or its trial folders"


def first_trial(record: RunRecord | None, night: dict) -> tuple[int, int | None]:
    """The seed and fold of the run's first trial (whose predictions the run folder itself holds); for a run
    without a row, the night's first."""
    if record is not None and record.seeds:
        return record.seeds[0], (record.folds[0] if record.folds else None)
    seeds = night.get("seeds") or [DEFAULT_SEED]
    return int(seeds[0]), (0 if night.get("eval") == "cv" else None)


def choose_backend(sandbox: str, allow_unsandboxed: bool, run: int) -> tuple[str, str]:
    """The retrain's sandbox backend, and "UNSANDBOXED (why); " when it is none."""
    try:
        backend, passed_over = sandboxes.choose(sandbox, allow_unsandboxed)
    except sandboxes.SandboxError as exc:
        raise ExportError(f"training run {run} again: {exc}") from None
    if backend != "none":
        return backend, ""
    return backend, "UNSANDBOXED (" + ("; ".join(passed_over) or "--sandbox none") + "): "


def retrain_job(ws: Workspace, files: dict[str, bytes], run: int, seed: int, fold: int | None,
                options: tuple[str, ...], budget_s: float | None, timeout_s: float | None) -> tuple[Job, list[Path]]:
    """The run's train.py with its commit's fixed files, on the night's data view of its first trial, with the
    test rows in it; and the folders the sandbox hides (the loop's cache, the data's sources)."""
    night = ws.night()
    try:
        views = DataViews(ws.repo / "data", night.get("eval", "val"), int(night.get("folds", 5)),
                          int(night.get("split_seed", 2026)))
        view = views.view(fold, with_test=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"{ws.repo / 'data'}: cannot build run {run}'s data view ({exc}); run prepare.py "
                          "again") from None
    job = Job(files[TRAIN_FILE].decode("utf-8"), {name: files[name] for name in FIXED_FILES if name in files},
              view.files, seed,
              fold, timeout_s=timeout_s or math.inf, budget_s=budget_s, extra_args=options,
              label=f"export run {run}")
    return job, private_folders(ws.repo, views.manifest)


def run_retrain(ws: Workspace, job: Job, private: list[Path], backend: str, run: int, log: Path) -> bytes:
    """Run the job under the loop's lock (Ctrl-C kills it: KeyboardInterrupt); its pred_test.csv's bytes."""
    lock = LoopLock(ws.repo, ws.tag, "export")
    try:
        lock.acquire()
    except LockError as exc:
        raise ExportError(f"{exc}; training run {run} again has to wait until it stops") from None
    try:
        fd = open_no_follow(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "wb") as sink, abort_on_signals() as aborted:
            outcome = run_job(job, backend, jobs_root=ws.jobs_root, repo=ws.repo, private=private, log=sink,
                              abort=aborted)
    finally:
        lock.release()
    if outcome.kind == "aborted":
        raise KeyboardInterrupt
    if outcome.kind != "ok":
        raise ExportError(f"training run {run} again failed ({outcome.kind}: {outcome.error_line()}); see {log}")
    if PREDICTIONS_FILE not in outcome.outputs:
        raise ExportError(f"training run {run} again wrote no {PREDICTIONS_FILE}; see {log}")
    return outcome.outputs[PREDICTIONS_FILE]


def _some(ids: list[str]) -> str:
    return ", ".join(ids[:SHOWN_IDS]) + (", ..." if len(ids) > SHOWN_IDS else "")


def shown(path: Path, repo: Path) -> str:
    """A path relative to the repository when it is inside it."""
    try:
        return str(path.relative_to(repo))
    except ValueError:
        return str(path)
