"""The loop's scores: the fixed evaluate.py, imported once at start (before any train.py runs), applied to
the prediction files a trial brought back. What train.py prints is never used for a decision."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

from research_loop.evaluation import diagnostics


def import_file(path: Path, label: str):
    """Import a repository file as a module (the fixed evaluate.py and prepare.py)."""
    name = f"_ner_autoresearch_{label}_{abs(hash(str(Path(path).resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class TrialScore:
    """One trial's val (or fold) scores."""

    strict: float
    relaxed: float
    per_type: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"strict": self.strict, "relaxed": self.relaxed, "per_type": self.per_type}

    @classmethod
    def from_json(cls, data: dict) -> TrialScore:
        return cls(float(data["strict"]), float(data["relaxed"]), dict(data.get("per_type") or {}))


class Scorer:
    """evaluate.py's score_files / score_rows for the loop, with the data's entity types enforced."""

    def __init__(self, evaluate_module, entity_types: list[str]):
        self.evaluate = evaluate_module
        self.entity_types = list(entity_types)
        self.error = evaluate_module.ScoreError

    def _summary(self, result: dict) -> TrialScore:
        per_type = {name: result["strict"]["per_type"].get(name, {}).get("f1", 0.0) for name in self.entity_types}
        return TrialScore(result["strict"]["f1"], result["relaxed"]["f1"], per_type)

    def score_file(self, predictions: Path, gold: Path) -> TrialScore:
        """ScoreError (one line) when the predictions do not cover the gold rows exactly."""
        return self._summary(self.evaluate.score_files(predictions, gold, entity_types=self.entity_types))

    def pooled(self, pairs: list[tuple[Path, Path]]) -> TrialScore:
        """Scores over the union of several prediction files' rows (CV: every fold's val predictions)."""
        gold, predicted = {}, {}
        for predictions, gold_path in pairs:
            gold.update(self.evaluate.read_tags(gold_path))
            predicted.update(self.evaluate.read_tags(predictions, self.entity_types))
        return self._summary(self.evaluate.score_rows(gold, predicted))

    def read(self, predictions: Path, gold: Path) -> tuple[dict, dict]:
        """(gold tags, predicted tags) by row id, each file read once; ScoreError for a predicted tag of an
        entity type the data does not have."""
        return self.evaluate.read_tags(gold), self.evaluate.read_tags(predictions, self.entity_types)

    def breakdown(self, gold: dict, predicted: dict) -> dict:
        """The error counts per entity type (diagnostics.py), from evaluate.py's own spans."""
        return diagnostics.breakdown(gold, predicted, self.evaluate.spans, self.entity_types)

    def score_rows(self, gold: dict, predicted: dict, pred_name: str = "PRED") -> TrialScore:
        return self._summary(self.evaluate.score_rows(gold, predicted, pred_name=pred_name))
