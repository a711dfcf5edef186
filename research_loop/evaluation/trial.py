"""A run in progress: one commit, the trials (seeds or folds) its policy asks for, and their outcomes.

Each finished trial is written to its folder (`trial.json`, the predictions, run.log), so a restarted loop
reuses the trials that finished and runs again only the ones that were interrupted.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from research_loop.evaluation.acceptance import AcceptancePolicy, Standing, TrialKey, Verdict
from research_loop.evaluation.scoring import Scorer, TrialScore
from research_loop.execution.jobs import EXPECTED_OUTPUTS, JobResult, parse_printed
from research_loop.hygiene import plain_text
from research_loop.safe_io import read_text, write_atomically

TRIAL_FILE = "trial.json"
MAX_EPOCHS, MAX_VRAM_MB = 1e6, 1e8  # what a printed block may claim; anything else is left blank
MAX_EXTRA_BYTES = 8 << 20  # out/ files beside the predictions and summary.json kept per trial
LOOP_FILES = ("run.log", TRIAL_FILE, "timing.json", "attempts", "train.pid", "proposal_train.py", "tampered",
              "consensus", "submission.csv")
LOOP_NAMES = re.compile(r"^(seed|fold)-\d+|^tampered")  # the loop's own folders inside a run folder


@dataclass
class Candidate:
    """A proposal with a run number and a commit (off the branch, parent = the best it was based on)."""

    run: int
    commit: str
    train_py: str
    parent: str
    hypothesis: str
    direction: str
    cost_usd: float | None = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    key: str = ""  # the agent's handle
    is_baseline: bool = False


@dataclass
class TrialOutcome:
    index: int
    seed: int
    fold: int | None
    commit: str
    kind: str  # ok, crash, oom, timeout, sandbox, unusable (predictions the scorer refused)
    seconds: float
    note: str = ""
    score: dict | None = None  # TrialScore.to_json()
    device: str = ""
    epochs: float | None = None
    peak_vram_mb: float | None = None
    worker: str = ""
    predicted_test: bool = False
    diagnostics: dict | None = None  # error counts per entity type on the scored rows (diagnostics.py)

    @property
    def ok(self) -> bool:
        return self.kind == "ok" and self.score is not None

    @property
    def trial_score(self) -> TrialScore:
        return TrialScore.from_json(self.score)

    def save(self, folder: Path) -> None:
        write_atomically(folder / TRIAL_FILE, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> TrialOutcome | None:
        try:
            return cls(**json.loads(read_text(folder / TRIAL_FILE)))
        except (OSError, ValueError, TypeError):
            return None


def _number(text: str | None, most: float) -> float | None:
    """A number in [0, most] from the printed block, else None (train.py's `nan`, `inf`, `-3` or `1e308`
    never reach a row)."""
    try:
        value = float(str(text)[:40])
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and 0 <= value <= most else None


def save_outputs(result: JobResult, folder: Path) -> list[str]:
    """Write what train.py left in out/ into the trial's folder: the prediction files and summary.json, and
    other files only up to MAX_EXTRA_BYTES per trial (a night of trials must not fill the disk); the loop's
    own file names never."""
    notes, extra = list(result.skipped), 0
    for name, data in result.outputs.items():
        if name in LOOP_FILES or LOOP_NAMES.match(name):
            notes.append(f"{name} (a name the loop uses)")
            continue
        if name not in EXPECTED_OUTPUTS:
            extra += len(data)
            if extra > MAX_EXTRA_BYTES:
                notes.append(f"{name} (other files past {MAX_EXTRA_BYTES >> 20} MiB are not kept)")
                continue
        write_atomically(folder / name, data)
    return notes


def outcome_of(result: JobResult, index: int, key: TrialKey, commit: str, folder: Path, scorer: Scorer,
               gold: Path, predicted_test: bool) -> TrialOutcome:
    """Save a finished job's outputs, score its val predictions, and describe it as a TrialOutcome."""
    seed, fold = key
    printed = parse_printed(result.log_tail)
    outcome = TrialOutcome(index, seed, fold, commit, result.kind, result.seconds, worker=result.worker[:80],
                           device=plain_text(printed.get("device", ""), 40), epochs=_number(printed.get("epochs"), MAX_EPOCHS),
                           peak_vram_mb=_number(printed.get("peak_vram_mb"), MAX_VRAM_MB), predicted_test=predicted_test)
    folder.mkdir(parents=True, exist_ok=True)
    skipped = save_outputs(result, folder) if result.kind == "ok" else []
    if result.kind != "ok":
        outcome.note = result.error_line()
        if result.kind == "oom":
            outcome.kind = "oom"
    else:
        try:  # read once: the score and the error counts come from the same rows
            gold_tags, predicted = scorer.read(folder / "pred_val.jsonl", gold)
            outcome.score = scorer.score_rows(gold_tags, predicted, str(folder / "pred_val.jsonl")).to_json()
        except scorer.error as exc:
            outcome.kind, outcome.note = "unusable", f"unusable predictions: {exc}"
        except (ValueError, RecursionError, MemoryError, OSError) as exc:  # the scorer must never end the night
            outcome.kind, outcome.note = "unusable", f"unusable predictions: {type(exc).__name__}"
    if outcome.score is not None:  # the error counts inform the agent; they never change a run's outcome
        try:
            outcome.diagnostics = scorer.breakdown(gold_tags, predicted)
        except (scorer.error, ValueError, RecursionError, MemoryError, OSError):
            outcome.diagnostics = None
    if skipped:
        outcome.note = (outcome.note + "; " if outcome.note else "") + "not kept from out/: " + ", ".join(skipped)
    outcome.note = plain_text(outcome.note, 600)
    outcome.save(folder)
    return outcome


@dataclass
class Trial:
    """One candidate's trials as they are planned, run and finished."""

    candidate: Candidate
    keys: list[TrialKey]
    done: dict[int, TrialOutcome] = field(default_factory=dict)
    running: set[int] = field(default_factory=set)

    def scores(self) -> dict[int, float]:
        """Per trial strict F1 as scored (the policy compares it with the best's at results.tsv's precision)."""
        return {index: outcome.trial_score.strict for index, outcome in self.done.items() if outcome.ok}

    def failure(self) -> TrialOutcome | None:
        failed = [outcome for outcome in self.done.values() if not outcome.ok]
        return min(failed, key=lambda outcome: outcome.index) if failed else None

    def next_step(self, policy: AcceptancePolicy, standing: Standing) -> Verdict:
        """What the policy wants now, given the trials that finished ("run" lists those not started yet)."""
        verdict = policy.decide(self.scores(), self.keys, standing)
        if verdict.action != "run":
            return verdict
        return Verdict("run", tuple(index for index in verdict.run if index not in self.running
                                    and index not in self.done), verdict.reason)

    @property
    def idle(self) -> bool:
        return not self.running


def predicted_no_span(ws, record) -> bool:
    """The all-O collapse: a scored run whose every trial's pred_val.jsonl has no B- or I- tag. Without the
    prediction files (cleaned up), a strict and relaxed F1 of exactly 0 (not one token of any gold span hit)."""
    if not record.status.scored:
        return False
    files = [ws.trial_dir(record.run, index, seed, fold) / "pred_val.jsonl"
             for index, (seed, fold) in enumerate(record.trial_keys)]
    files = [path for path in files if path.is_file()]
    if not files:
        return record.strict_f1 == 0 and record.relaxed_f1 == 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return False
        if any(tag != "O" for line in text.splitlines() if line.strip()
               for tag in _tags(line)):
            return False
    return True


def _tags(line: str) -> list[str]:
    try:
        tags = json.loads(line).get("tags")
    except (ValueError, AttributeError):
        return ["?"]  # unreadable: not evidence of a collapse
    return [str(tag) for tag in tags] if isinstance(tags, list) else ["?"]
