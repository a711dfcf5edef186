"""Agents without an LLM: `BuiltinAgent` (seeded random search over train.py's config block, one constant
per proposal; the offline demo and the matched-compute baseline) and `NullAgent` (comment-only changes)."""

from __future__ import annotations

import ast
import hashlib
import json
import random
from pathlib import Path

from .agents import AgentError, Context, Proposal
from .ledger import RESULTS_FILE, read_rows

# name -> (direction label, candidate values). Left out on purpose: MODEL_NAME (the model is a choice for the
# human), SEED (the loop sets seeds), PRECISION (bf16/fp16 crash DeBERTa v1), and speed-only knobs.
KNOBS: dict[str, tuple[str, list]] = {
    "LEARNING_RATE": ("learning rate", [5e-6, 1e-5, 2e-5, 3e-5, 5e-5, 8e-5, 1e-4]),
    "EPOCHS": ("training length", [3, 5, 8, 10, 15, 20]),
    "BATCH_SIZE": ("batch size", [4, 8, 16, 32]),
    "GRAD_ACCUM": ("batch size", [1, 2, 4]),
    "MAX_LENGTH": ("input length", [128, 192, 256, 384]),
    "WINDOW_STRIDE": ("input length", [32, 64, 96]),
    "WARMUP_RATIO": ("schedule", [0.0, 0.05, 0.1, 0.2]),
    "SCHEDULE": ("schedule", ["cosine", "linear", "constant"]),
    "WEIGHT_DECAY": ("regularisation", [0.0, 0.01, 0.05, 0.1]),
    "MAX_GRAD_NORM": ("regularisation", [0.0, 0.5, 1.0, 5.0]),
    "LABEL_SMOOTHING": ("loss", [0.0, 0.05, 0.1, 0.2]),
    "LABEL_SCHEME": ("label scheme", ["BIO", "IO"]),
    "CLASS_WEIGHTS": ("loss", []),  # built from the labels, see _class_weight_options
    "THRESHOLDS": ("post-processing", []),  # built from the entity types, see _threshold_options
    "BOUNDARY_TRIM": ("post-processing", [True, False]),
    "MC_DROPOUT_PASSES": ("MC dropout", [0, 4, 8, 16]),
    "MC_DROPOUT_WEIGHT": ("MC dropout", [0.3, 0.5, 0.7, 1.0]),
}


def _class_weight_options(labels: list[str]) -> list[dict]:
    """Uniform; down-weighted O; all entity labels up-weighted; one type's labels up-weighted."""
    entity_labels = [label for label in labels if label != "O"]
    types = sorted({label[2:] for label in entity_labels})
    options: list[dict] = [{}, {"O": 0.5}, {"O": 0.3}]
    options += [{label: weight for label in entity_labels} for weight in (2.0, 3.0, 5.0)]
    options += [{f"B-{name}": 2.0, f"I-{name}": 2.0} for name in types]
    return options


def _threshold_options(entity_types: list[str]) -> list[dict]:
    """Argmax; one threshold for every type; a lower threshold for one type."""
    options: list[dict] = [{}]
    options += [{name: threshold for name in entity_types} for threshold in (0.2, 0.3, 0.4, 0.5)]
    options += [{name: threshold} for name in entity_types for threshold in (0.3, 0.4)]
    return options


def literal(value) -> str:
    """A value as Python source in the config block's style (double-quoted strings)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(key)}: {literal(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(literal(item) for item in value) + "]"
    return repr(value)


def read_config(train_py: str) -> dict[str, tuple[int, object]]:
    """name -> (line number, value) for every one-line `NAME = <literal>` at the top level of train.py."""
    config = {}
    for node in ast.parse(train_py).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id.isupper() and node.lineno == node.end_lineno):
            try:
                config[node.targets[0].id] = (node.lineno, ast.literal_eval(node.value))
            except ValueError:
                continue  # computed, not a literal: not a knob for random search
    return config


def set_constant(train_py: str, name: str, value) -> str:
    """train.py with the value of `NAME = value  # comment` rewritten, the comment kept."""
    for node in ast.parse(train_py).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id == name:
            lines = train_py.splitlines(keepends=True)
            line = lines[node.lineno - 1].encode("utf-8")  # ast offsets count UTF-8 bytes
            start, end = node.value.col_offset, node.value.end_col_offset
            lines[node.lineno - 1] = (line[:start] + literal(value).encode("utf-8") + line[end:]).decode("utf-8")
            return "".join(lines)
    raise KeyError(name)


def normalised(train_py: str) -> str:
    """train.py's syntax tree: equal for two files that differ only in comments and whitespace."""
    return ast.dump(ast.parse(train_py))


class BuiltinAgent:
    """Seeded random search: change one config constant of the current best train.py per proposal."""

    name = "builtin"

    def __init__(self, repo: Path, labels: list[str], entity_types: list[str], seed: int = 0,
                 fixed: frozenset[str] = frozenset()):
        """fixed: constants that --train-args override (EPOCHS under --epochs): changing them does nothing."""
        self.repo = repo
        self.seed = seed
        self.labels = labels
        self.options = {name: values for name, (_, values) in KNOBS.items() if name not in fixed}
        self.options["CLASS_WEIGHTS"] = _class_weight_options(labels)
        self.options["THRESHOLDS"] = _threshold_options(entity_types)
        # (train.py it started from, constant, value) of every proposal so far, bounced ones included
        self.proposed: set[tuple[str, str, str]] = set()

    def _choices(self, config: dict, base: str) -> dict[str, list]:
        """knob -> the values that make a new train.py (not the current value, not proposed before)."""
        choices = {}
        for name, values in self.options.items():
            if name not in config:
                continue
            current = config[name][1]
            if name == "MC_DROPOUT_WEIGHT" and not config.get("MC_DROPOUT_PASSES", (0, 0))[1]:
                continue  # the weight does nothing while MC dropout is off
            fresh = [value for value in values if value != current and self._consistent(config, name, value)
                     and (base, name, literal(value)) not in self.proposed]
            if fresh:
                choices[name] = fresh
        return choices

    def _consistent(self, config: dict, name: str, value) -> bool:
        """False for a change train.py would refuse: class weights for labels the label scheme lacks."""
        values = {key: item for key, (_, item) in config.items()} | {name: value}
        learned = self.labels if values.get("LABEL_SCHEME", "BIO") == "BIO" else \
            [label for label in self.labels if not label.startswith("B-")]
        return set(values.get("CLASS_WEIGHTS") or {}) <= set(learned)

    def propose(self, context: Context) -> Proposal:
        # Seeded by the run count too, so a resumed night continues the search instead of replaying it.
        done = len(read_rows(context.repo / RESULTS_FILE))
        rng = random.Random(f"{self.seed}:{done}:{len(self.proposed)}")
        config = read_config(context.train_py)
        base = hashlib.sha256(context.train_py.encode()).hexdigest()
        choices = self._choices(config, base)
        if not choices:
            error = AgentError("builtin search: every one-constant change of the current train.py was proposed")
            error.retryable = False  # asking again cannot help: the loop stops instead of waiting
            raise error
        name = rng.choice(sorted(choices))
        value = rng.choice(choices[name])
        self.proposed.add((base, name, literal(value)))
        return Proposal(
            train_py=set_constant(context.train_py, name, value),
            hypothesis=f"{name} {literal(config[name][1])} -> {literal(value)} (random search)",
            direction=KNOBS[name][0],
        )


class NullAgent:
    """Proposes the current train.py plus a comment line: measures how often noise alone gets accepted."""

    name = "null"

    def __init__(self):
        self.count = 0

    def propose(self, context: Context) -> Proposal:
        self.count += 1
        text = context.train_py if context.train_py.endswith("\n") else context.train_py + "\n"
        return Proposal(
            train_py=f"{text}# null proposal {self.count}\n",
            hypothesis=f"null proposal {self.count}: train.py unchanged but for a comment",
            direction="null",
        )
