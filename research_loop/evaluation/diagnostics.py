"""Where a run's strict F1 is lost, per entity type, as counts only: the diagnostics the agent reads.

Spans are the fixed scorer's own (evaluate.spans, seqeval's reading of BIO tags). Each gold span gets
exactly one category, so per type the categories sum to the gold spans and `exact` is strict recall's
numerator:
- `exact`: a predicted span with the same type, start and end;
- `too_short`: no exact match; the same-type prediction overlapping it most lies inside it;
- `too_long`: that prediction contains it;
- `shifted`: that prediction overlaps it, and neither contains the other;
- `type_confusion`: no prediction of its type overlaps it, one of another type does (`confused_as` counts
  those types);
- `missed`: no prediction overlaps it.
A predicted span that overlaps no gold span is `spurious` (counted under its predicted type). `predicted`
counts every predicted span, so `exact / predicted` is strict precision.

Nothing here keeps a row, a token or an id: a breakdown is a dict of entity type names and whole numbers,
the only thing of val that trial.json, CURRENT_STATE.md, the report and the agent's context get from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from research_loop.safe_io import read_text

GOLD_CATEGORIES = ("exact", "too_short", "too_long", "shifted", "type_confusion", "missed")
COUNTS = ("gold", "predicted", *GOLD_CATEGORIES, "spurious")
HEADINGS = {"gold": "gold", "predicted": "predicted", "exact": "exact", "too_short": "too short",
            "too_long": "too long", "shifted": "shifted", "type_confusion": "type confusion", "missed": "missed",
            "spurious": "spurious"}
TRIAL_FILE = "trial.json"  # trial.TRIAL_FILE (read here as JSON: trial.py imports this module's users)


def _empty() -> dict:
    return {**{name: 0 for name in COUNTS}, "confused_as": {}}


def _overlap(a: tuple[str, int, int], b: tuple[str, int, int]) -> int:
    return min(a[2], b[2]) - max(a[1], b[1])


def _boundary(gold: tuple[str, int, int], pred: tuple[str, int, int]) -> str:
    if gold[1] <= pred[1] and pred[2] <= gold[2]:
        return "too_short"
    if pred[1] <= gold[1] and gold[2] <= pred[2]:
        return "too_long"
    return "shifted"


def breakdown_spans(gold_spans: list, pred_spans: list, counts: dict) -> None:
    """Add one row's (type, start, end) spans (end exclusive, as evaluate.spans gives them) to `counts`."""
    exact = set(gold_spans) & set(pred_spans)
    for span in gold_spans:
        entry = counts.setdefault(span[0], _empty())
        entry["gold"] += 1
        if span in exact:
            entry["exact"] += 1
            continue
        overlapping = [pred for pred in pred_spans if _overlap(span, pred) > 0]
        same = [pred for pred in overlapping if pred[0] == span[0]]
        if same:
            entry[_boundary(span, max(same, key=lambda pred: _overlap(span, pred)))] += 1
        elif overlapping:
            entry["type_confusion"] += 1
            other = max(overlapping, key=lambda pred: _overlap(span, pred))[0]
            entry["confused_as"][other] = entry["confused_as"].get(other, 0) + 1
        else:
            entry["missed"] += 1
    for pred in pred_spans:
        entry = counts.setdefault(pred[0], _empty())
        entry["predicted"] += 1
        if not any(_overlap(gold, pred) > 0 for gold in gold_spans):
            entry["spurious"] += 1


def breakdown(gold: dict[str, list[str]], predicted: dict[str, list[str]], spans, entity_types: list[str]) -> dict:
    """Counts per entity type (every task type listed, also one with no spans) over rows matched by id;
    `spans` is the fixed scorer's evaluate.spans."""
    counts = {name: _empty() for name in entity_types}
    for row_id, gold_tags in gold.items():
        breakdown_spans(spans(gold_tags), spans(predicted.get(row_id, ["O"] * len(gold_tags))), counts)
    return counts


def total(per_type: dict) -> dict:
    """Every type's counts summed (confused_as aside)."""
    return {name: sum(entry.get(name, 0) for entry in per_type.values()) for name in COUNTS}


def add(first: dict | None, second: dict) -> dict:
    """The sum of two breakdowns (a run's trials together)."""
    out = {name: dict(entry, confused_as=dict(entry.get("confused_as", {}))) for name, entry in (first or {}).items()}
    for name, entry in second.items():
        mine = out.setdefault(name, _empty())
        for count in COUNTS:
            mine[count] = mine.get(count, 0) + int(entry.get(count, 0))
        for other, number in entry.get("confused_as", {}).items():
            mine["confused_as"][other] = mine["confused_as"].get(other, 0) + int(number)
    return out


def clean(data: object) -> dict | None:
    """A breakdown read back from trial.json, with nothing in it but type names and whole numbers (else None)."""
    if not isinstance(data, dict):
        return None
    out = {}
    for name, entry in data.items():
        if not isinstance(name, str) or not isinstance(entry, dict):
            return None
        counts = {count: entry.get(count, 0) for count in COUNTS}
        confused = entry.get("confused_as", {})
        if not all(isinstance(value, int) and not isinstance(value, bool) for value in counts.values()):
            return None
        if not isinstance(confused, dict) or not all(isinstance(key, str) and isinstance(value, int)
                                                      for key, value in confused.items()):
            return None
        out[name] = {**counts, "confused_as": dict(confused)}
    return out


# ----- a run's breakdown, from its trials' trial.json files -----


def trial_breakdowns(folders: dict[tuple[int, int | None], Path]) -> dict[tuple[int, int | None], dict]:
    """(seed, fold) -> the breakdown its trial.json holds, for the trials that have one."""
    out = {}
    for key, folder in folders.items():
        try:
            data = json.loads(read_text(folder / TRIAL_FILE, default="") or "null")
        except ValueError:
            continue
        found = clean(data.get("diagnostics")) if isinstance(data, dict) else None
        if found is not None:
            out[key] = found
    return out


def run_folders(ws, record) -> dict[tuple[int, int | None], Path]:
    """(seed, fold) -> the folder of each trial a results.tsv row ran (Workspace.trial_dir)."""
    return {key: ws.trial_dir(record.run, index, *key) for index, key in enumerate(record.trial_keys)}


def main_keys(record) -> list[tuple[int, int | None]]:
    """A run's trials without a cross-validated baseline's second-seed replicates (each fold once)."""
    keys, folds = [], set()
    for seed, fold in record.trial_keys:
        if fold is None or fold not in folds:
            keys.append((seed, fold))
            folds.add(fold)
    return keys


def compared(ws, new, old) -> tuple[dict, dict, int] | None:
    """Two runs' breakdowns summed over the main trials both ran (like for like), and how many those are."""
    mine, theirs = trial_breakdowns(run_folders(ws, new)), trial_breakdowns(run_folders(ws, old))
    old_keys = set(main_keys(old))
    shared = [key for key in main_keys(new) if key in old_keys and key in mine and key in theirs]
    if not shared:
        return None
    return summed(mine, shared), summed(theirs, shared), len(shared)


def summed(breakdowns: dict, keys) -> dict | None:
    """The sum over the given trials (None when one of them has no breakdown)."""
    keys = list(keys)
    if not keys or any(key not in breakdowns for key in keys):
        return None
    result = None
    for key in keys:
        result = add(result, breakdowns[key])
    return result


# ----- text (markdown tables of counts) -----


def _row(label: str, entry: dict, signed: bool = False) -> str:
    cells = []
    for count in COUNTS:
        value = entry.get(count, 0)
        cell = f"{value:+d}" if signed else str(value)
        if count == "type_confusion" and entry.get("confused_as"):
            parts = ", ".join(f"{other} {number:+d}" if signed else f"{other} {number}"
                              for other, number in sorted(entry["confused_as"].items()) if number)
            cell += f" (as {parts})" if parts else ""
        cells.append(cell)
    return f"| {label} | " + " | ".join(cells) + " |"


def table(per_type: dict, entity_types: list[str], signed: bool = False) -> list[str]:
    """A markdown table: one row per entity type and one for all of them."""
    names = [*entity_types, *sorted(set(per_type) - set(entity_types))]
    lines = ["| type | " + " | ".join(HEADINGS[count] for count in COUNTS) + " |",
             "|---" * (len(COUNTS) + 1) + "|"]
    lines += [_row(name, per_type.get(name, _empty()), signed) for name in names]
    lines.append(_row("all", total(per_type), signed))
    return lines


def difference(new: dict, old: dict) -> dict:
    """new - old, count by count."""
    out = {}
    for name in set(new) | set(old):
        a, b = new.get(name, _empty()), old.get(name, _empty())
        entry = {count: a.get(count, 0) - b.get(count, 0) for count in COUNTS}
        confused = {other: a.get("confused_as", {}).get(other, 0) - b.get("confused_as", {}).get(other, 0)
                    for other in set(a.get("confused_as", {})) | set(b.get("confused_as", {}))}
        entry["confused_as"] = {other: number for other, number in confused.items() if number}
        out[name] = entry
    return out


LEGEND = ("Each gold span counts once: exact (same type, start and end), too short (the best-overlapping "
          "prediction of its type lies inside it), too long (that prediction contains it), shifted (it overlaps, "
          "neither contains the other), type confusion (only predictions of another type overlap it), or missed "
          "(nothing overlaps it). Spurious: predicted spans that overlap no gold span. Counts only, from the fixed "
          "scorer's spans on val (in cross-validation, on each fold's held-out rows).")


# ----- the report: the best against the baseline -----


@dataclass(frozen=True)
class ErrorBreakdown:
    """The baseline's and the best's error counts per entity type on val, over the trials both ran."""

    baseline: dict
    best: dict
    trials: int
    entity_types: list[str]


def error_breakdown(ws, best, baseline) -> ErrorBreakdown | None:
    """The best run's and the baseline's records compared (Workspace ws); None when either has no breakdown
    (a night from before trial.json kept one)."""
    if best is None or baseline is None:
        return None
    found = compared(ws, best, baseline)
    if found is None:
        return None
    mine, theirs, trials = found
    return ErrorBreakdown(theirs, mine, trials, list(baseline.per_type))


# ----- CURRENT_STATE.md: the best run's breakdown and the last run's change against it -----


def _trials(count: int, unit: str) -> str:
    return f"{count} {unit}{'s' if count != 1 else ''}"


def state_lines(records: list, folders_of, keys: list, entity_types: list[str], unit: str) -> list[str]:
    """The section of CURRENT_STATE.md (empty before the baseline has a breakdown). `folders_of(record)` gives
    (seed, fold) -> trial folder; `keys` are the night's planned trials (a CV baseline's replicates aside)."""
    kept = [record for record in records if record.status.kept]
    if not kept:
        return []
    best = kept[-1]
    best_trials = trial_breakdowns(folders_of(best))
    best_keys = [key for key in best.trial_keys if key in keys]
    best_counts = summed(best_trials, best_keys)
    if best_counts is None:
        return []
    lines = ["## Where the best run's errors are", "", LEGEND, "",
             f"Run {best.run}, summed over its {_trials(len(best_keys), unit)}:", "",
             *table(best_counts, entity_types), ""]
    scored = [record for record in records if record.status.scored and record.seed_scores]
    last = scored[-1] if scored else None
    if last is best and len(kept) > 1:
        other, against, label = best, kept[-2], f"Run {best.run} (kept) against the best before it, run {kept[-2].run}"
    elif last is not None and last is not best:
        other, against, label = last, best, f"The last scored run, run {last.run} ({last.status}), against the best"
    else:
        return lines
    theirs = trial_breakdowns(folders_of(other))
    mine = trial_breakdowns(folders_of(against)) if against is not best else best_trials
    shared = [key for key in other.trial_keys if key in keys and key in theirs and key in mine]
    if not shared:
        return lines
    change = difference(summed(theirs, shared), summed(mine, shared))
    heading = (f"{label}, on the {_trials(len(shared), unit)} both ran (its counts minus the best's: where the "
               "change won or lost exact spans, and which errors it traded):")
    lines += [heading, "", *table(change, entity_types, signed=True), ""]
    return lines
