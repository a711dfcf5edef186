"""`consensus RUN`: several LLMs vote to keep, drop or re-bound each span a run predicted, and the result is
scored on val and on the blind holdout beside the run's own scores (a published Task 7 system reported a dev
gain from such a vote; the holdout says whether it holds).

Runs in the loop's process, never in train.py (no keys there). Reads the run's first trial folder
(runs/<tag>/NNNN/: pred_val.jsonl, pred_holdout.jsonl, pred_test.csv when present), asks every model about
every span (ballot.py: the cache, the cost cap; votes.py: the prompt, the answer
format, the vote), and writes beside them consensus/: the same prediction files, answers.jsonl (every vote)
and summary.json (what report.py reads).
Answers are cached in the per-user cache, so a rerun asks only what was not answered yet.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from research_loop.agents.base import Usage
from research_loop.consensus import votes
from research_loop.consensus.ballot import Ballot, ConsensusError, Voter, check_voters, collect, parse_voters
from research_loop.evaluation.dataviews import DataViews
from research_loop.evaluation.scoring import import_file
from research_loop.evaluation.trial import TrialOutcome
from research_loop.night.folders import Workspace, WorkspaceError, check_tag, nights
from research_loop.safe_io import read_text, write_atomically

OUT_DIR = "consensus"
PREDICTION_FILES = {"val": "pred_val.jsonl", "holdout": "pred_holdout.jsonl", "test": "pred_test.csv"}
WORKERS = 8  # questions in flight at once (the SDKs retry rate limits on their own)


@dataclass
class Split:
    """One split's predictions from the run: id -> tags in file order, each row's tokens, and the gold that
    scores it (None, and why, when it is not scored)."""

    name: str
    path: Path
    predicted: dict[str, list[str]]
    tokens: dict[str, list[str]]
    gold: dict[str, list[str]] | None
    unscored: str = ""


@dataclass
class ConsensusResult:
    folder: Path
    summary: dict
    asked: int  # questions sent now
    cached: int  # answers taken from the cache
    spent_usd: float  # the priced part of what was asked now
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """What the vote did, the scores before -> after, the cost, and what was written."""
        s = self.summary
        rule = (f"a span stays with at least {s['min_votes']} keep-or-rebound votes" if s["rule"] == "min-votes"
                else "a span goes when most of the models that answered vote drop; a tie keeps it")
        per_split = ", ".join(f"{name} {count}" for name, count in s["spans_by_split"].items())
        lines = [(f"run {s['run']} of night {s['tag']}: {s['spans']} spans ({per_split}) put to "
                  f"{', '.join(s['models'])} ({rule}): {s['kept']} kept as they were, {s['rebounded']} re-bounded, "
                  f"{s['dropped']} dropped, {s['unjudged']} with no answer; {s['abstentions']} abstentions")]
        for name in ("val", "holdout"):
            before, after = s[f"run_{name}"], s[name]
            if before is None or after is None:
                continue
            lines.append(f"{name}: strict F1 {before['strict_f1']:.4f} -> {after['strict_f1']:.4f} "
                         f"({after['strict_f1'] - before['strict_f1']:+.4f}), relaxed F1 {before['relaxed_f1']:.4f}"
                         f" -> {after['relaxed_f1']:.4f} ({after['relaxed_f1'] - before['relaxed_f1']:+.4f})")
        cost = "unknown (a model without a price)" if s["cost_usd"] is None else f"${s['cost_usd']:.2f}"
        lines.append(f"cost of the answers: {cost}, {s['tokens_in']:,} tokens in, {s['tokens_out']:,} out; now "
                     f"{self.asked} asked (${self.spent_usd:.2f} priced), {self.cached} from the cache")
        return lines + self.notes + [f"wrote {self.folder}/ ({', '.join(s['files'])})"]


# ----- The run and its predictions -----


def run_folder(repo: Path, tag: str, run: int) -> tuple[Workspace, Path]:
    """The night's workspace and the run's first trial folder, which must hold pred_val.jsonl."""
    try:
        ws = Workspace(repo, check_tag(tag))
    except WorkspaceError as exc:
        raise ConsensusError(str(exc)) from None
    if not ws.tag_dir.is_dir():
        known = ", ".join(name for name, _ in nights(repo)) or "none yet"
        raise ConsensusError(f"no night {tag!r} in {repo / 'runs'} (nights: {known})")
    folder = ws.run_dir(run)
    if not folder.is_dir():
        runs = sorted(int(path.name) for path in ws.tag_dir.iterdir() if path.name.isdigit())
        have = f"its runs are {runs[0]} to {runs[-1]}" if runs else "it has no runs yet"
        raise ConsensusError(f"night {tag} has no run {run} ({have})")
    if not (folder / PREDICTION_FILES["val"]).is_file():
        raise ConsensusError(f"run {run} of night {tag} has no predictions ({shown(folder, repo)} has no "
                             f"{PREDICTION_FILES['val']}: the run crashed, was invalid, or was never trained)")
    return ws, folder


def load_splits(ws: Workspace, folder: Path, prepare, evaluate, types: list[str]) -> list[Split]:
    """The run's val (its first trial's rows, scored as the loop scores them), holdout and test predictions."""
    data, night = ws.repo / "data", ws.night()
    outcome = TrialOutcome.load(folder)
    try:
        views = DataViews(data, night.get("eval", "val"), int(night.get("folds", 5)), int(night.get("split_seed", 2026)))
        view = views.view(outcome.fold if outcome is not None else None)
        holdout_rows = prepare.load_split("holdout", data) if (data / "holdout.jsonl").is_file() else None
        test_rows = prepare.load_split("test", data) if (folder / PREDICTION_FILES["test"]).is_file() else None
    except (OSError, ValueError, KeyError, prepare.DataError) as exc:
        raise ConsensusError(f"{data}: cannot read the prepared data ({exc}); run prepare.py again") from None
    gold = {row["id"]: row["tags"] for row in view.gold}
    splits = [read_split(ws, folder, "val", {row["id"]: row["tokens"] for row in views.train + views.val}, gold,
                         evaluate, types)]
    if holdout_rows is not None:
        gold_path = prepare.holdout_gold_path(data)
        holdout_gold, why = None, f"the holdout gold is not on this machine ({gold_path})"
        if gold_path.is_file():
            holdout_gold, why = read_tags(evaluate, gold_path, None), ""
        splits.append(read_split(ws, folder, "holdout", {row["id"]: row["tokens"] for row in holdout_rows},
                                 holdout_gold, evaluate, types, why))
    if test_rows is not None:
        tokens = {row.get("source_id", row["id"]): row["tokens"] for row in test_rows}
        splits.append(read_split(ws, folder, "test", tokens, None, evaluate, types, "no gold for the test rows"))
    return splits


def read_split(ws: Workspace, folder: Path, name: str, tokens: dict, gold: dict | None, evaluate,
               types: list[str], unscored: str = "") -> Split:
    path = folder / PREDICTION_FILES[name]
    if not path.is_file():
        raise ConsensusError(f"{shown(path, ws.repo)}: not found; the consensus is checked on the blind "
                             f"holdout, so the run needs its {name} predictions")
    predicted = read_tags(evaluate, path, types)
    for row_id, tags in predicted.items():
        if row_id not in tokens:
            raise ConsensusError(f"{shown(path, ws.repo)}: row {row_id}: not a row of data/{name}.jsonl")
        if len(tags) != len(tokens[row_id]):
            raise ConsensusError(f"{shown(path, ws.repo)}: row {row_id}: {len(tags)} tags for "
                                 f"{len(tokens[row_id])} tokens")
    return Split(name, path, predicted, tokens, gold, unscored)


def read_tags(evaluate, path: Path, types: list[str] | None) -> dict[str, list[str]]:
    try:
        return evaluate.read_tags(path, types)
    except evaluate.ScoreError as exc:
        raise ConsensusError(str(exc)) from None


# ----- The pass -----


def run_consensus(repo: Path, tag: str, run: int, llms: list[str], base_url: str | None = None,
                  min_votes: int | None = None, max_cost_usd: float | None = 5.0, echo: Callable = print,
                  workers: int = WORKERS) -> ConsensusResult:
    """Put each span of run `run` of night `tag` to the models, write consensus/ beside the run's predictions,
    and score it on val and holdout next to the run's own scores (max_cost_usd None: no cap). The cap is
    checked before each question, so up to `workers` - 1 questions in flight may pass it."""
    repo = Path(repo).resolve()
    voters = parse_voters(list(llms), base_url)
    if min_votes is not None and not 1 <= min_votes <= len(voters):
        raise ConsensusError(f"--min-votes {min_votes}: between 1 and the number of models ({len(voters)})")
    if max_cost_usd is not None and not max_cost_usd >= 0:
        raise ConsensusError(f"--max-cost-usd {max_cost_usd}: must be 0 or more")
    ws, folder = run_folder(repo, tag, run)
    for name in ("prepare.py", "evaluate.py"):
        if not (repo / name).is_file():
            raise ConsensusError(f"{repo / name}: not found; is this the ner-autoresearch repository?")
    prepare, evaluate = import_file(repo / "prepare.py", "prepare"), import_file(repo / "evaluate.py", "evaluate")
    try:
        types = prepare.load_entity_types(repo / "data")
    except prepare.DataError as exc:
        raise ConsensusError(str(exc)) from None
    splits = load_splits(ws, folder, prepare, evaluate, types)
    own = {f"run_{split.name}": score(evaluate, split.gold, split.predicted, shown(split.path, repo))
           for split in splits if split.gold is not None}
    card = read_text(repo / "data" / prepare.TASK_CARD, default="") or f"Entity types: {', '.join(types)}.\n"
    check_voters(voters)
    ballot = Ballot(votes.system_prompt(card, types), math.inf if max_cost_usd is None else max_cost_usd, echo)

    spans = [(split, row_id, votes.Span(start, end, kind)) for split in splits
             for row_id, tags in split.predicted.items() for kind, start, end in evaluate.spans(tags)]
    questions = [votes.question(split.tokens[row_id], span) for split, row_id, span in spans]
    echo(f"asking {len(voters)} model{'s' * (len(voters) > 1)} about {len(spans)} spans of run {run} "
         f"({len(spans) * len(voters)} questions; answers already cached cost nothing)")
    answers = collect(ballot, voters, questions, workers, echo)
    if spans and all(reply["text"] is None for replies in answers for reply in replies):
        raise ConsensusError(f"no model answered ({answers[0][0]['problem']}); nothing written")

    staging = folder / f".{OUT_DIR}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        decided, counts, usage = tally(spans, voters, answers, min_votes, types, staging / "answers.jsonl")
        scores, files = write_predictions(splits, decided, staging, prepare, evaluate, types)
        summary = {"models": [voter.label for voter in voters],
                   "min_votes": min_votes if min_votes is not None else votes.needed_votes(len(voters), None),
                   "rule": "min-votes" if min_votes is not None else "majority",
                   **{name: scores.get(name) for name in ("val", "holdout")},
                   **{name: own.get(name) for name in ("run_val", "run_holdout")},
                   "cost_usd": usage.cost_usd, "tokens_in": usage.tokens_in, "tokens_out": usage.output_tokens,
                   "spans": len(spans), **counts, "cap_hit": ballot.cap_hit, "max_cost_usd": max_cost_usd,
                   "spans_by_split": {split.name: sum(item[0] is split for item in spans) for split in splits},
                   "tag": ws.tag, "run": run, "files": [*files, "answers.jsonl", "summary.json"]}
        write_atomically(staging / "summary.json", json.dumps(summary, indent=1) + "\n")
        archived = install(staging, folder / OUT_DIR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    notes = [f"{split.name}: not scored ({split.unscored})" for split in splits
             if split.name != "test" and split.gold is None]
    if ballot.cap_hit:
        notes.append(f"the cost cap (${max_cost_usd:.2f}) was reached: the questions not asked count as "
                     "abstentions; the same command again asks them (what was answered is cached)")
    notes += [f"{label} stopped after an error: {error}" for label, error in ballot.stopped.items()]
    if archived is not None:
        notes.append(f"the previous consensus of this run is kept in {shown(archived, repo)}")
    return ConsensusResult(folder / OUT_DIR, summary, ballot.asked, ballot.cached, ballot.spent, notes)


def tally(spans: list, voters: list[Voter], answers: list, min_votes: int | None, types: list[str],
          log_path: Path) -> tuple[dict, dict, Usage]:
    """Read every answer as a vote (each logged to answers.jsonl) and decide each span: the decisions by
    (split, row), the counts for the summary, and what the answers cost."""
    decided: dict[tuple[str, str], list] = {}
    counts = {"kept": 0, "rebounded": 0, "dropped": 0, "unjudged": 0, "abstentions": 0}
    usage = Usage()
    with open(log_path, "w", encoding="utf-8") as log:
        for (split, row_id, span), replies in zip(spans, answers):
            ballots = []
            for voter, reply in zip(voters, replies):
                usage.add(reply["usage"])
                vote = (votes.abstain(reply["problem"]) if reply["text"] is None else
                        votes.parse_answer(reply["text"], span, len(split.tokens[row_id]), types))
                ballots.append(vote)
                counts["abstentions"] += vote.decision == "abstain"
                log.write(json.dumps({
                    "split": split.name, "row": row_id, "span": span.shown(), "model": voter.label,
                    "source": reply["source"], "decision": vote.decision,
                    **({"voted": vote.span.shown()} if vote.span else {}), "problem": vote.problem,
                    "answer": reply["text"], "tokens_in": reply["usage"].tokens_in,
                    "tokens_out": reply["usage"].output_tokens, "cost_usd": reply["usage"].cost_usd}) + "\n")
            chosen = votes.decide(span, ballots, min_votes)
            outcome = ("unjudged" if all(vote.decision == "abstain" for vote in ballots) else
                       "dropped" if chosen is None else "kept" if chosen == span else "rebounded")
            counts[outcome] += 1
            decided.setdefault((split.name, row_id), []).append((span, chosen))
    return decided, counts, usage


def score(evaluate, gold: dict, predicted: dict, name: str) -> dict:
    """Strict and relaxed F1 as the loop computes them; ConsensusError when the rows do not match the gold's."""
    try:
        result = evaluate.score_rows(gold, predicted, pred_name=name)
    except evaluate.ScoreError as exc:
        raise ConsensusError(str(exc)) from None
    return {"strict_f1": result["strict"]["f1"], "relaxed_f1": result["relaxed"]["f1"]}


def write_predictions(splits: list[Split], decided: dict, staging: Path, prepare, evaluate,
                      types: list[str]) -> tuple[dict, list[str]]:
    """Each split's consensus predictions (the run's rows, in its order and format), and the written files'
    scores (val, holdout; None when not scored)."""
    scores, files = {}, []
    for split in splits:
        rows = [{"id": row_id, "source_id": row_id,
                 "tags": votes.bio_tags(len(tags), votes.settle(decided.get((split.name, row_id), [])))}
                for row_id, tags in split.predicted.items()]
        path = staging / PREDICTION_FILES[split.name]
        if split.name == "test":
            prepare.write_submission_csv(path, rows, ids=list(split.predicted))
        else:
            prepare.write_predictions_jsonl(path, rows)
        files.append(path.name)
        if split.gold is not None:
            scores[split.name] = score(evaluate, split.gold, read_tags(evaluate, path, types), f"{OUT_DIR}/{path.name}")
    return scores, files


def install(staging: Path, target: Path) -> Path | None:
    """Move the staged folder into place; a previous consensus with another summary is kept beside it
    (consensus-<its time>/) and returned."""
    archived = None
    if target.is_dir():
        old = read_text(target / "summary.json", default="")
        if old != read_text(staging / "summary.json"):
            stamp = datetime.fromtimestamp(target.stat().st_mtime).strftime("%Y%m%dT%H%M%S")
            archived = target.with_name(f"{OUT_DIR}-{stamp}")
            number = 1
            while archived.exists():
                number += 1
                archived = target.with_name(f"{OUT_DIR}-{stamp}-{number}")
            os.replace(target, archived)
    if target.is_dir():  # the same result again: replace it
        shutil.rmtree(target)
    os.replace(staging, target)
    return archived


def shown(path: Path, repo: Path) -> str:
    try:
        return str(Path(path).relative_to(repo))
    except ValueError:
        return str(path)
