"""Opening a night: every collaborator a session needs, each checked before the first run starts.

The repository must be clean (the loop never discards uncommitted work), data/ must match its manifest and
the stamp prepare.py wrote outside the repository, results.tsv must be the rows the loop wrote, a sandbox
must work (or the night is UNSANDBOXED, in plain sight), and the model must be in the local cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from research_loop import config_block
from research_loop.evaluation.dataviews import DataViews, write_gold
from research_loop.evaluation.scoring import Scorer, import_file
from research_loop.execution import sandbox
from research_loop.night.config import NightConfig
from research_loop.night.folders import STOP_FILE, Workspace, cache_root
from research_loop.records.current_state import best_record
from research_loop.records.gitops import TRAIN_FILE, Git, GitError
from research_loop.records.integrity import FIXED_FILES, ProtectedFiles, TreeWatch, verify_data
from research_loop.records.ledger import Ledger, now_iso, read_records, tag_of
from research_loop.records.run_record import RunRecord
from research_loop.safe_io import read_bytes


class NightError(Exception):
    """A one-line, user-facing reason the night cannot start."""


@dataclass
class NightFiles:
    """What setup found and made, for the session."""

    git: Git
    ledger: Ledger
    records: list[RunRecord]
    views: DataViews
    scorer: Scorer
    prepare: object
    protected: ProtectedFiles
    tree: TreeWatch
    backend: str
    backend_note: str
    fixed_files: dict[str, bytes]
    gold: dict[int | None, Path]  # fold (None on val) -> the gold of the rows a trial predicts
    holdout_gold: Path | None
    calibration: list[float]
    entity_types: list[str]
    labels: list[str]
    notes: list[str] = field(default_factory=list)  # lines for the user (restored files, the sandbox, ...)


def finish_interrupted_keep(repo_git: Git, records: list[RunRecord]) -> str | None:
    """When train.py (index or working tree) differs from HEAD only because a kill cut the loop's own git
    step short, put the best run's train.py back; returns a note, or None when there was nothing to do."""
    best = best_record(records)
    if best is None or TRAIN_FILE not in repo_git.changed_paths():
        return None
    current = (repo_git.root / TRAIN_FILE).read_text(encoding="utf-8", errors="replace")
    known = {repo_git.show(record.commit) for record in records if record.status.kept and repo_git.exists(record.commit)}
    if current not in known and current != repo_git.show("HEAD"):
        return None  # the human's own edit: the dirty-tree check refuses it
    repo_git.move_to(best.commit)
    return f"finished the interrupted git step of run {best.run} (train.py back to its commit)"


def open_repository(ws: Workspace, notes: list[str]) -> Git:
    """The repository, clean: a train.py half-moved by a killed keep is finished first (never a user's edit),
    and the user is told."""
    if (ws.repo / STOP_FILE).exists():
        raise NightError(f"{ws.repo / STOP_FILE} exists: remove it to start the loop")
    try:
        repo_git = Git(ws.repo, ws.store / "git")
    except GitError as exc:
        raise NightError(str(exc)) from None
    try:
        records = read_records(ws.results_file(), ws.tag)
    except ValueError as exc:
        raise NightError(str(exc)) from None
    if repo_git.current_branch() == f"autoresearch/{ws.tag}":
        note = finish_interrupted_keep(repo_git, records)
        if note:
            notes.append(note)
    changed = repo_git.changed_paths()
    if changed:
        raise NightError(f"the working tree has uncommitted changes ({', '.join(sorted(changed))}); "
                         "commit or stash them first: the loop never discards them")
    return repo_git


def import_fixed(repo: Path):
    """evaluate.py and prepare.py, imported once, before any train.py runs."""
    for name in ("evaluate.py", "prepare.py"):
        if not (repo / name).is_file():
            raise NightError(f"{repo / name}: not found; is this the ner-autoresearch repository?")
    return import_file(repo / "evaluate.py", "evaluate"), import_file(repo / "prepare.py", "prepare")


def check_data(ws: Workspace, prepare, protected: ProtectedFiles, notes: list[str]) -> None:
    """data/ against its manifest and stamp; a file changed behind the loop's back comes back from the
    loop's copy when that copy is right, else the night does not start."""
    data_dir = ws.repo / "data"
    if not (data_dir / "manifest.json").is_file():
        raise NightError(f"{data_dir / 'manifest.json'}: not found; run `python prepare.py` first")
    problems = verify_data(data_dir, prepare)
    if problems and protected.hashes:
        violations = [violation for violation in protected.violations() if violation.path.startswith("data/")]
        if violations:
            saved = ws.tag_dir / f"tampered-{now_iso().replace(':', '')}"
            left = protected.restore(violations, saved)
            notes.append(f"data/ was changed since the last session ({', '.join(map(str, violations))}); "
                         f"restored from the loop's copy, the changed files saved under {saved.relative_to(ws.repo)}"
                         + (f"; could not restore {', '.join(left)}" if left else ""))
            problems = verify_data(data_dir, prepare)
    if problems:
        raise NightError(problems[0] + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))


def check_results(ledger: Ledger, ws: Workspace, notes: list[str]) -> None:
    problem = ledger.problem()
    if problem:
        saved = ws.tag_dir / f"tampered-{now_iso().replace(':', '')}" / "results.tsv"
        ledger.restore(saved)
        notes.append(f"{problem}; put back the loop's own rows (the changed file is saved as "
                     f"{saved.relative_to(ws.repo)})")
    ledger.adopt()
    if ledger.drop_partial_row():
        notes.append("results.tsv: dropped an unfinished last line (the loop was killed mid-write)")
    added = ledger.migrate()
    if added:
        notes.append(f"results.tsv: added the columns {', '.join(added)} (written by an older version)")


def choose_sandbox(config: NightConfig, notes: list[str]) -> tuple[str, str]:
    try:
        backend, passed_over = sandbox.choose(config.sandbox, config.allow_unsandboxed)
    except sandbox.SandboxError as exc:
        raise NightError(str(exc)) from None
    if backend == "none":
        why = "; ".join(passed_over) if passed_over else "--sandbox none"
        note = f"UNSANDBOXED: train.py runs with your user's powers ({why})"
        notes.append(note + ("; you asked for it with --no-sandbox" if config.writes_code else ""))
        return backend, note
    if passed_over:
        notes.append(f"sandbox: {backend} ({'; '.join(passed_over)})")
    return backend, f"sandbox: {backend}"


def private_folders(repo: Path, manifest: dict) -> list[Path]:
    """What every job hides besides the repository: the loop's cache (holdout gold, its store, other jobs),
    data/ wherever it really is (a link out of the repository), and the folders the data came from."""
    return [cache_root(), repo / "data", *source_folders(manifest)]


def source_folders(manifest: dict) -> list[Path]:
    """The folders the data came from (they hold the unsplit gold): hidden from train.py like the cache."""
    folders = []
    for source in [manifest.get("source"), *(aux.get("source") for aux in (manifest.get("aux") or {}).values())]:
        if isinstance(source, str) and Path(source).is_dir():
            folders.append(Path(source))
    return folders


def read_calibration(ws: Workspace) -> list[float]:
    path = ws.tag_dir / "calibration.json"
    if not path.is_file():
        return []
    try:
        calibration = json.loads(path.read_text(encoding="utf-8"))
        return [float(score) for score in calibration["scores"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NightError(f"{path}: unreadable ({exc}); run `agent_loop.py calibrate` again") from None


def open_files(config: NightConfig, ws: Workspace) -> NightFiles:
    """Every check and collaborator of setup, in order; NightError (one line) when the night cannot start."""
    notes: list[str] = []
    repo_git = open_repository(ws, notes)
    try:
        repo_git.use_branch(ws.tag, config.base)
    except GitError as exc:
        raise NightError(str(exc)) from None
    archive_other_night(ws, notes)
    evaluate, prepare = import_fixed(ws.repo)
    protected = ProtectedFiles(ws.repo, ws.store / "protected")
    protected.load()
    check_data(ws, prepare, protected, notes)
    protected.accept_all()
    try:
        labels, entity_types = prepare.load_labels(ws.repo / "data"), prepare.load_entity_types(ws.repo / "data")
    except prepare.DataError as exc:
        raise NightError(str(exc)) from None
    ledger = Ledger(ws.results_path, ws.store / "results.tsv", entity_types)
    check_results(ledger, ws, notes)
    try:
        records = ledger.records(ws.tag)
    except ValueError as exc:
        raise NightError(str(exc)) from None
    views = DataViews(ws.repo / "data", config.eval_mode, config.folds, config.split_seed)
    gold = {}
    for fold in ([None] if config.eval_mode == "val" else range(config.folds)):
        gold[fold] = write_gold(views.view(fold).gold, ws.store / "gold" / f"{config.eval_mode}-{fold}.jsonl")
    holdout_gold = None
    if (ws.repo / "data" / "holdout.jsonl").is_file():
        path = prepare.holdout_gold_path(ws.repo / "data")
        holdout_gold = path if path.is_file() else None
        if holdout_gold is None:
            notes.append(f"holdout gold not found ({path}): holdout scoring is off; rerun prepare.py")
    backend, backend_note = choose_sandbox(config, notes)
    fixed = {name: read_bytes(ws.repo / name) for name in FIXED_FILES}
    tree = TreeWatch(ws.repo, own=[f"runs/{ws.tag}", "results.tsv", "CURRENT_STATE.md", STOP_FILE, "program.md",
                                   "mlruns", "progress.png"])
    return NightFiles(repo_git, ledger, records, views, Scorer(evaluate, entity_types), prepare, protected, tree,
                      backend, backend_note, fixed, gold, holdout_gold, read_calibration(ws), entity_types, labels,
                      notes)


def archive_other_night(ws: Workspace, notes: list[str]) -> None:
    """results.tsv and CURRENT_STATE.md of another tag move under runs/<that tag>/; this tag's come back."""
    from research_loop.records.ledger import RESULTS_FILE, STATE_FILE

    old = tag_of(ws.results_path)
    if ws.results_path.is_file() and old != ws.tag:
        folder = ws.repo / "runs" / (old or "untagged")
        folder.mkdir(parents=True, exist_ok=True)
        for name in (RESULTS_FILE, STATE_FILE):
            if (ws.repo / name).is_file():
                target, number = folder / name, 0
                while target.exists():
                    number += 1
                    target = folder / f"{name}.{number}"
                os.replace(ws.repo / name, target)
        notes.append(f"results.tsv of tag {old} moved to runs/{old}/")
    if not ws.results_path.is_file():
        for name in (RESULTS_FILE, STATE_FILE):
            if (ws.tag_dir / name).is_file():
                os.replace(ws.tag_dir / name, ws.repo / name)


def baseline_commit(config: NightConfig, ws: Workspace, repo_git: Git, records: list[RunRecord]) -> str:
    """The commit the baseline runs: the branch head, after writing a new night's --set values into
    train.py's config block (one commit on the branch, so every run's train.py is the whole truth)."""
    head = repo_git.head_sha()
    if records or not config.settings:
        return head
    night = ws.night()
    if night.get("baseline_commit") and repo_git.exists(night["baseline_commit"]):
        return night["baseline_commit"]
    text = repo_git.show(head)
    try:
        changed = config_block.apply_settings(text, config.settings)
    except config_block.ConfigBlockError as exc:
        raise NightError(str(exc)) from None
    if changed == text:
        return head
    listed = ", ".join(f"{name}={config_block.literal(value)}" for name, value in config.settings)
    commit = repo_git.commit_train(head, changed, f"baseline config: {listed}\n\nAutoresearch-Settings: {listed}\n")
    repo_git.move_to(commit)
    return commit


def write_night(config: NightConfig, ws: Workspace, backend: str, baseline: str, extra: dict) -> dict:
    """runs/<tag>/night.json: the night's settings, written when it starts, kept when it resumes."""
    night = ws.night()
    if not night:
        night = {
            "tag": ws.tag, "started": now_iso(), "agent": config.agent, "policy": config.policy.name,
            "trials": min(config.policy.trials, len(config.trial_keys())), "eval": config.eval_mode, "folds": config.folds,
            "seeds": list(config.seeds), "seed_count": len(config.seeds), "split_seed": config.split_seed,
            "run_budget_min": config.run_budget_s / 60 if config.run_budget_s else None,
            "settings": {name: config_block.literal(value) for name, value in config.settings},
            "train_options": list(config.train_options), "run_budget_s": config.run_budget_s,
            "baseline_commit": baseline, "sessions": [], "base": config.base or baseline,
            "from_branch": config.from_branch,
        }
    opened = now_iso()
    # Each session's start, so that the report's wall time leaves out the hours between sessions (a night from
    # before they were recorded counts from its start to this session).
    night.update({"sandbox": backend, "workers": config.workers, "resumed": opened,
                  "sessions": [*night.get("sessions", [night["started"]]), opened], **extra})
    ws.write_night(night)
    return night


def discard_failed_night(ws: Workspace, from_branch: str | None, base: str | None) -> str:
    """A new night whose baseline could not run leaves no branch and no commit behind: the user is put back
    where they were, the night's branch and run refs are deleted, and its files (the baseline's log, its row)
    move to runs/<tag>.failed-<time>/. Returns the line that says so."""
    import shutil

    import git

    from research_loop.records.gitops import branch_name
    from research_loop.records.ledger import RESULTS_FILE, STATE_FILE

    repo = git.Repo(ws.repo)
    target = from_branch if from_branch and from_branch in repo.heads else base
    if target:
        repo.git.checkout("-q", target)
    if branch_name(ws.tag) in repo.heads and (repo.head.is_detached or repo.active_branch.name != branch_name(ws.tag)):
        repo.git.branch("-D", branch_name(ws.tag))
    for ref in repo.git.for_each_ref("--format=%(refname)", f"refs/autoresearch/{ws.tag}/").split():
        repo.git.update_ref("-d", ref)
    folder = ws.repo / "runs" / f"{ws.tag}.failed-{now_iso()[:19].replace(':', '')}"
    if ws.tag_dir.is_dir():
        os.replace(ws.tag_dir, folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tag_of(ws.results_path) == ws.tag:
        for name in (RESULTS_FILE, STATE_FILE):
            if (ws.repo / name).is_file():
                os.replace(ws.repo / name, folder / name)
    shutil.rmtree(ws.store, ignore_errors=True)  # the loop's own copies of this night
    return (f"no branch or commit was left behind; back on {target or 'the commit you started from'}; the "
            f"baseline's log and row are in {folder.relative_to(ws.repo)}/")
