"""Agents without an LLM: `BuiltinAgent` (seeded random search over train.py's config block, one constant
per proposal; the offline demo and the matched-compute baseline) and `NullAgent` (comment-only changes)."""

from __future__ import annotations

import hashlib
import random

from ..config_block import literal, read_config, set_constant
from . import search_space
from .base import AgentError, Context, Proposal


class BuiltinAgent:
    """Seeded random search: change one config constant of the current best train.py per proposal."""

    name = "builtin"

    def __init__(self, labels: list[str], entity_types: list[str], seed: int = 0, aux_names: list[str] = (),
                 refused: list[dict] = ()):
        self.seed = seed
        self.refused = list(refused)  # what train.py --check refused (preflight.check_search_space)
        self.options = search_space.checked_options(search_space.options(labels, entity_types, aux_names),
                                                    self.refused)
        # (train.py it started from, constant, value) of every proposal so far, bounced ones included
        self.proposed: set[tuple[str, str, str]] = set()

    def _choices(self, config: dict, base: str) -> dict[str, list]:
        """knob -> the values that make a new train.py (not the current value, not proposed before)."""
        choices = {}
        for name, values in self.options.items():
            if name not in config or search_space.inert(config, name):
                continue
            fresh = [value for value in values if value != config[name]
                     and search_space.allowed({**config, name: value}, self.refused)
                     and (base, name, literal(value)) not in self.proposed]
            if fresh:
                choices[name] = fresh
        return choices

    def propose(self, context: Context) -> Proposal:
        # Seeded by the run count too, so a resumed night continues the search instead of replaying it.
        rng = random.Random(f"{self.seed}:{context.runs_so_far}:{len(self.proposed)}")
        config = {name: value for name, (_, value) in read_config(context.train_py).items()}
        base = hashlib.sha256(context.train_py.encode()).hexdigest()
        choices = self._choices(config, base)
        if not choices:
            raise AgentError("builtin search: every one-constant change of the current train.py was proposed",
                             retryable=False)  # asking again cannot help: the loop stops instead of waiting
        name = rng.choice(sorted(choices))
        value = rng.choice(choices[name])
        self.proposed.add((base, name, literal(value)))
        return Proposal(
            train_py=set_constant(context.train_py, name, value),
            hypothesis=f"{name} {literal(config[name])} -> {literal(value)} (random search)",
            direction=search_space.direction_of(name),
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
