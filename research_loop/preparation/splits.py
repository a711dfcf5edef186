"""The holdout split (seeded, stratified), span counts and labels, and the split files of data/ with the
manifest that describes them; an auxiliary set's own folder and manifest."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from prepare import AUX_DIR, DataError, row_error, sha256_file, write_json, write_jsonl
from research_loop.preparation.sources import tokens_only


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """Spans (type, start, end inclusive) under the conlleval rules, as seqeval reads them."""
    from seqeval.metrics.sequence_labeling import get_entities  # pulls in scikit-learn (~1 s): load on use

    return get_entities(list(tags))


def split_holdout(dev: list[dict], frac: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(val, holdout): a seeded share of the dev rows, stratified by whether a row has any span."""
    if frac == 0:
        return dev, []
    has_span = {row["id"]: bool(entities(row["tags"])) for row in dev}
    total = round(frac * len(dev))
    with_span = sorted(i for i, flag in has_span.items() if flag)
    without_span = sorted(i for i, flag in has_span.items() if not flag)
    take_with = round(total * len(with_span) / len(dev))
    rng = random.Random(seed)  # not hash(): stable across processes and machines
    chosen = set()
    for ids, count in ((with_span, take_with), (without_span, total - take_with)):
        shuffled = ids.copy()
        rng.shuffle(shuffled)
        chosen.update(shuffled[:count])
    val = [row for row in dev if row["id"] not in chosen]
    holdout = [row for row in dev if row["id"] in chosen]
    if not val or not holdout:
        raise DataError(f"dev split: {len(dev)} rows are too few for --holdout-frac {frac:g}")
    return val, holdout


def span_counts(rows: list[dict], types: list[str]) -> dict[str, int]:
    counts = Counter(span[0] for row in rows for span in entities(row["tags"]))
    return {entity_type: counts.get(entity_type, 0) for entity_type in types}


def entity_types_of(rows: list[dict]) -> list[str]:
    return sorted({tag[2:] for row in rows for tag in row["tags"] if tag != "O"})


def bio_labels(types: list[str]) -> list[str]:
    return ["O"] + [f"{prefix}-{t}" for t in types for prefix in ("B", "I")]


def check_unique_ids(splits: dict[str, list[dict]]) -> None:
    """Ids must be unique across every split, since predictions and gold are matched by id."""
    seen = {}
    for split, rows in splits.items():
        for row in rows:
            if row["id"] in seen:
                raise row_error(split, row["id"], "id", f"also in {seen[row['id']]}; ids must be unique")
            seen[row["id"]] = split


def build(data: dict, holdout_frac: float, seed: int, staging: Path) -> tuple[dict, dict, list[dict]]:
    """Write the split files into staging; return the manifest (not yet written), the rows of the splits the
    task card may describe (train, val, test) and the holdout gold rows."""
    val, holdout = split_holdout(data["dev"], holdout_frac, seed)
    labeled = {"train": data["train"], "val": val, "holdout": holdout}
    test = data.get("test")
    check_unique_ids({**labeled, "test": test or []})
    types = entity_types_of([row for rows in labeled.values() for row in rows])
    splits = {}
    for name, rows in labeled.items():
        if name == "holdout" and not rows:
            continue
        write_jsonl(staging / f"{name}.jsonl", tokens_only(rows) if name == "holdout" else rows)
        splits[name] = {"rows": len(rows), "spans": span_counts(rows, types)}
    if test is not None:
        write_jsonl(staging / "test.jsonl", tokens_only(test))
        splits["test"] = {"rows": len(test)}
    manifest = {
        "source": data["source"],
        "format": data["format"],
        "inputs": data["inputs"],
        "labels": bio_labels(types),
        "entity_types": types,
        "splits": splits,
        "split_seed": seed,
        "holdout_frac": holdout_frac,
    }
    gold = [{"id": row["id"], "tags": row["tags"]} for row in holdout]
    described = {"train": data["train"], "val": val, **({"test": test} if test is not None else {})}
    return manifest, described, gold


def write_aux(name: str, aux: dict, staging: Path) -> dict:
    """data/aux/NAME/train.jsonl and its manifest.json; returns the main manifest's entry for it."""
    rows = aux["rows"]
    types = entity_types_of(rows)
    if not types:
        raise DataError(f"--aux {name}={aux['source']}: no entity spans in its labelled rows")
    check_unique_ids({f"aux {name}": rows})
    folder = staging / AUX_DIR / name
    write_jsonl(folder / "train.jsonl", rows)
    own = {
        "name": name,
        "source": aux["source"],
        "format": aux["format"],
        "used": aux["used"],
        "inputs": aux["inputs"],
        "labels": bio_labels(types),
        "entity_types": types,
        "rows": len(rows),
        "spans": span_counts(rows, types),
        "files": {"train.jsonl": sha256_file(folder / "train.jsonl")},
    }
    write_json(folder / "manifest.json", own)
    files = {
        f"{AUX_DIR}/{name}/{file}": sha256_file(folder / file) for file in ("train.jsonl", "manifest.json")
    }
    entry_keys = ("source", "format", "used", "labels", "entity_types", "rows", "spans")
    return {**{key: own[key] for key in entry_keys}, "files": files}
