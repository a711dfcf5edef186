"""data/task.md, what the agent is told about the task: the user's own file, or one written from the data
(Task 7 gets its entity types explained). A local folder is named by its name only: the card goes to the
agent's LLM, which has no business knowing the user's directories."""

from __future__ import annotations

import statistics
from pathlib import Path

from prepare import TASK_CARD, DataError
from research_loop.preparation.splits import span_counts

# What the task card says about the Task 7 entity types (the organisers' guidelines, in short).
TASK7_TYPES = {
    "ClinicalImpacts": "health consequences, such as overdose, withdrawal, addiction, hospital visits",
    "SocialImpacts": "effects on life and relationships, such as job loss, arrests, family conflict, money",
}


def split_table(described: dict[str, list[dict]], types: list[str]) -> list[str]:
    """A markdown table: rows, words per row and span counts of each split the card describes."""
    lines = ["| split | rows | words per row (mean / max) | spans |", "|---|---|---|---|"]
    for name, rows in described.items():
        lengths = [len(row["tokens"]) for row in rows] or [0]
        if rows and "tags" in rows[0]:
            spans = ", ".join(f"{t} {n:,}" for t, n in span_counts(rows, types).items())
        else:
            spans = "(unlabeled)"
        lines.append(
            f"| {name} | {len(rows):,} | {statistics.mean(lengths):.1f} / {max(lengths):,} | {spans} |"
        )
    return lines


def shown_source(source: str) -> str:
    """A source as the task card names it: a local folder by its name only (the card goes to the agent's LLM,
    which has no business knowing the user's directories); a hub id or a URL as it is."""
    return Path(source).name if Path(source).is_absolute() else source


def task_card(manifest: dict, described: dict[str, list[dict]]) -> str:
    """A short description of the task, written from the data; Task 7 gets its entity types explained."""
    types = manifest["entity_types"]
    if manifest["format"] == "task7":
        lines = [
            "# The task: impacts of non-medical opioid use in Reddit posts (#SMM4H-HeaRD 2026 Task 7)",
            "",
            "Find the spans where a Reddit user reports a consequence of non-medical opioid use, tagged BIO",
            "over the given word tokens. Two entity types:",
            *(f"- `{name}`: {TASK7_TYPES[name]}." for name in types if name in TASK7_TYPES),
            "",
            "The text is informal Reddit writing: mojibake (`â€™`), markers such as",
            "`submission_title : -`, split contractions, slang and typos. Spans are rare (most tokens are",
            "`O`) and their boundaries are fuzzy; the training set is small, so scores vary between seeds",
            "by more than many changes gain.",
        ]
    else:
        name = shown_source(manifest["source"])
        lines = [
            f"# The task: named-entity recognition on {name}",
            "",
            (
                f"Find the spans of {len(types)} entity type{'s' * (len(types) != 1)}, tagged BIO over the "
                f"given word tokens: {', '.join(f'`{t}`' for t in types)}."
            ),
            "(Written by prepare.py from the data alone; `prepare.py --task-card FILE` replaces it.)",
        ]
    source_line = f"Source: {shown_source(manifest['source'])} ({manifest['format']})."
    lines += ["", *split_table(described, types), "", source_line]
    if manifest.get("aux"):
        lines += ["", "Auxiliary NER sets prepared for transfer (`AUX_DATASETS` in train.py):"]
        for aux_name, entry in manifest["aux"].items():
            lines.append(
                f"- `{aux_name}`: {entry['rows']:,} rows, types {', '.join(entry['entity_types'])} "
                f"(from {shown_source(entry['source'])})"
            )
    return "\n".join(lines) + "\n"


def write_task_card(staging: Path, manifest: dict, described: dict, user_card: str | None) -> dict:
    """data/task.md: the user's file as it is, or one written from the data; returns the manifest entry."""
    path = staging / TASK_CARD
    if user_card:
        try:
            text = Path(user_card).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{user_card}: task card not found") from None
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{user_card}: cannot read the task card as UTF-8 text ({error})") from None
        if not text.strip():
            raise DataError(f"{user_card}: the task card is empty")
        path.write_text(text, encoding="utf-8")
        return {"file": TASK_CARD, "source": str(Path(user_card).resolve())}
    path.write_text(task_card(manifest, described), encoding="utf-8")
    return {"file": TASK_CARD, "source": "written by prepare.py from the data"}
