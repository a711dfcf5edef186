"""`OptunaAgent` (--agent optuna): Optuna's TPE over the builtin random search's knobs and values,
1..max_knobs knobs of the current best per proposal, learning from what each proposal scored. The
matched-compute classical baseline for the LLM agent.

How a proposal is made, and why:
- TPE (Optuna's TPESampler: multivariate, seeded) draws VOTE_DRAWS whole configs from a scratch copy of the
  study's finished trials. Every drawn value that differs from the best's is a vote for that change. The
  proposal takes 1..max_knobs changes (how many: uniformly at random), drawn without replacement in
  proportion to their votes, one value per knob: a change TPE keeps drawing (l(x)/g(x) favours it) is
  picked more often than a value drawn once to explore. Small steps from the best keep each run readable
  ("LEARNING_RATE 1e-05 -> 5e-05") and comparable with the one-knob random search; the direction is that
  of each changed knob, joined ("learning rate + schedule").
- Never an inert knob, an inconsistent config, or a train.py proposed (or proposed from) before: when TPE's
  votes yield nothing new, uniform votes take over; when those do too, AgentError(retryable=False).
- The study records what will be trained, not what was drawn: the proposal's whole config is enqueued and
  asked as the study's next trial (ask/tell), and `observe` tells that trial its outcome.
- Values are stored as their `literal()` text ("5e-05", '{"O": 0.5}'): categorical choices must be plain
  scalars. A config value outside the search space (a hand-set baseline) is left out of the trial.
- Crashes, timeouts and invalid proposals are told strict F1 0.0, the worst score a run can have, so TPE ranks
  them with the worst runs and steers away (Optuna's FAIL state would hide them from TPE instead); the
  status is kept in the trial's user attributes.
- With a storage (an SQLite file under runs/<tag>/), a restarted night loads the same study: its trials, what
  was proposed from which best, and draws seeded by the trial count, so it continues rather than replays.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import random
from collections import Counter
from pathlib import Path

from ..config_block import literal, read_config, set_constant
from . import search_space
from .base import AgentError, Context, Outcome, Proposal

try:
    import optuna
except ImportError:  # an optional extra: the module still imports, and require_optuna() says what to install
    optuna = None

INSTALL_HINT = 'the optuna agent needs Optuna: pip install -e ".[optuna]"'
STUDY_NAME = "ner-autoresearch"
FAILURE_F1 = 0.0  # what a crash, timeout or invalid proposal is told: the lowest strict F1 there is
SCORED_STATUSES = ("keep", "discard")
VOTE_DRAWS = 8  # TPE draws per proposal; a change is picked in proportion to how many of them make it
PICKS = 100  # picks from TPE's votes, then as many from uniform votes, before the search gives up


def require_optuna() -> None:
    """ImportError with the install line when Optuna is missing."""
    if optuna is None:
        raise ImportError(INSTALL_HINT)


def _same(a, b) -> bool:
    """Equal as config values: 0 is 0.0, but True is not 1."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


@functools.lru_cache(maxsize=16)
def _constants(train_py: str) -> dict[str, tuple[int, object]]:
    """read_config, once per best: parsing train.py takes tens of milliseconds."""
    return read_config(train_py)


def _with_changes(train_py: str, changes: dict) -> str:
    """train.py with each changed constant's line rewritten by set_constant (that line alone: fast)."""
    lines = train_py.splitlines(keepends=True)
    for name, value in changes.items():
        index = _constants(train_py)[name][0] - 1
        lines[index] = set_constant(lines[index], name, value)
    return "".join(lines)


@functools.lru_cache(maxsize=16)
def _code_key(train_py: str) -> str:
    """train.py's syntax tree with the config block's values blanked: the code the proposals share."""
    tree, constants = ast.parse(train_py), _constants(train_py)
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) in constants:
            node.value = ast.Constant(None)
    return hashlib.sha256(ast.dump(tree).encode("utf-8")).hexdigest()


def _identity(code_key: str, config: dict) -> str:
    """A train.py's identity for the duplicate check: equal exactly when the loop's normalised() texts are
    (the code and every config value), without parsing each candidate (about 30 ms a parse)."""
    lines = [code_key] + [f"{name}={literal(value)}" for name, value in sorted(config.items())]
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def _int_seed(*parts) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)


class OptunaAgent:
    """TPE search over train.py's config block: 1..max_knobs knobs of the current best per proposal."""

    name = "optuna"

    def __init__(self, labels: list[str], entity_types: list[str], seed: int = 0, aux_names: list[str] = (),
                 storage: str | Path | optuna.storages.BaseStorage | None = None, max_knobs: int = 3,
                 refused: list[dict] = ()):
        require_optuna()
        if max_knobs < 1:
            raise ValueError(f"max_knobs must be at least 1, not {max_knobs}")
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "Trial 3 finished" lines amid the loop's
        self.seed = seed
        self.max_knobs = max_knobs
        self.refused = list(refused)  # what train.py --check refused (preflight.check_search_space)
        self.options = search_space.checked_options(search_space.options(labels, entity_types, aux_names),
                                                    self.refused)
        self.choices = {name: tuple(literal(value) for value in options)
                        for name, options in self.options.items()}
        if isinstance(storage, (str, Path)) and "://" not in str(storage):  # a file path, not a database URL
            Path(storage).parent.mkdir(parents=True, exist_ok=True)
            storage = f"sqlite:///{Path(storage).resolve()}"
        # Every parameter of this study's trials is enqueued, so its sampler never draws: TPE runs on a copy.
        self.study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="maximize",
                                         sampler=optuna.samplers.RandomSampler(seed=seed),
                                         load_if_exists=True)
        self._asked: dict[int, optuna.trial.Trial] = {}  # asked by this process, awaiting their outcome
        mismatched = sorted({name for trial in self.study.get_trials(deepcopy=False)
                             for name, distribution in trial.distributions.items()
                             if self.choices.get(name, distribution.choices) != distribution.choices})
        if mismatched:  # TPE cannot mix two value lists of one knob; the agent factory shows this line
            raise AgentError(f"the Optuna study in {storage} tried other values of {', '.join(mismatched)} "
                             "(other data?); resume it with the same data, or start a new night (--tag)",
                             retryable=False)
        # identities of the train.py texts proposed or proposed from: none is proposed again
        self.seen: set[str] = set()
        for trial in self.study.get_trials(deepcopy=False):
            self.seen.update(trial.user_attrs.get(key) for key in ("base", "train_py"))
        self.seen.discard(None)

    # ----- Values: config <-> Optuna's categorical choices -----

    def _encode(self, name: str, value) -> str | None:
        """The stored choice for a config value; None when the search space lacks it."""
        for option, choice in zip(self.options[name], self.choices[name]):
            if _same(option, value):
                return choice
        return None

    def _decode(self, name: str, choice: str):
        return self.options[name][self.choices[name].index(choice)]

    # ----- Choosing the changes -----

    def _knobs(self, config: dict) -> list[str]:
        """The search space's knobs in this train.py, less those that must stay inert (their switch is no
        knob here: AUX_LR without AUX_DATASETS when there is no auxiliary data)."""
        return [name for name in self.options if name in config and not (
            search_space.inert(config, name) and search_space.DEPENDS_ON[name][0] not in self.options)]

    def _tpe_votes(self, knobs: list[str], config: dict, finished: list, number: int) -> Counter:
        """(knob, choice) -> how many of VOTE_DRAWS TPE draws give the knob that value (the best's aside)."""
        # constant_liar off: each draw is an independent sample of one model, not one of a batch spread apart
        sampler = optuna.samplers.TPESampler(seed=_int_seed(self.seed, number), constant_liar=False)
        scratch = optuna.create_study(direction="maximize", sampler=sampler)
        scratch.add_trials(finished)
        votes: Counter = Counter()
        for _ in range(VOTE_DRAWS):
            trial = scratch.ask()
            for name in knobs:
                choice = trial.suggest_categorical(name, self.choices[name])
                if not _same(self._decode(name, choice), config[name]):
                    votes[name, choice] += 1
        return votes

    def _uniform_votes(self, knobs: list[str], config: dict) -> Counter:
        """One vote for every value of every knob but the best's."""
        return Counter({(name, choice): 1 for name in knobs
                        for option, choice in zip(self.options[name], self.choices[name])
                        if not _same(option, config[name])})

    def _pick(self, votes: Counter, rng: random.Random) -> dict:
        """1..max_knobs changes drawn without replacement in proportion to their votes, one value per knob."""
        size, pool, changes = rng.randint(1, self.max_knobs), dict(votes), {}
        while pool and len(changes) < size:
            [(name, choice)] = rng.choices(list(pool), weights=list(pool.values()))
            changes[name] = self._decode(name, choice)
            pool = {pair: count for pair, count in pool.items() if pair[0] != name}
        return changes

    def _fresh(self, config: dict, changes: dict, code_key: str) -> bool:
        """True when train.py allows the changes, none is inert, and the result was never proposed."""
        new_config = {**config, **changes}
        return (search_space.allowed(new_config, self.refused)
                and not any(search_space.inert(new_config, name) for name in changes)
                and _identity(code_key, new_config) not in self.seen)

    def _choose(self, knobs: list[str], config: dict, code_key: str) -> tuple[dict, str] | None:
        """(changes, where they came from): picks from TPE's votes, then from uniform votes when TPE's yield
        nothing new (it keeps drawing what was tried near this best)."""
        number = len(self.study.get_trials(deepcopy=False))
        finished = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        rng = random.Random(f"{self.seed}:{number}")
        # TPESampler draws at random until n_startup_trials (10) trials have finished
        tpe = "Optuna TPE" if len(finished) >= 10 else "Optuna random start"
        for votes, source in ((self._tpe_votes(knobs, config, finished, number), tpe),
                              (self._uniform_votes(knobs, config), "Optuna uniform draw")):
            for _ in range(PICKS if votes else 0):
                changes = self._pick(votes, rng)
                if self._fresh(config, changes, code_key):
                    return changes, source
        return None

    # ----- The Agent interface -----

    def propose(self, context: Context) -> Proposal:
        config = {name: value for name, (_, value) in _constants(context.train_py).items()}
        knobs = self._knobs(config)
        if not knobs:
            raise AgentError("optuna search: train.py's config block has none of the search space's knobs",
                             retryable=False)
        code_key = _code_key(context.train_py)
        base_key = _identity(code_key, config)
        self.seen.add(base_key)
        found = self._choose(knobs, config, code_key)
        if found is None:
            raise AgentError(f"optuna search: no untried change of 1 to {self.max_knobs} knobs of the "
                             "current train.py was found", retryable=False)  # asking again cannot help
        changes, source = found
        text = _with_changes(context.train_py, changes)
        changed = sorted(changes, key=knobs.index)
        trained = {**config, **changes}
        params = {name: self._encode(name, trained[name]) for name in knobs}
        params = {name: choice for name, choice in params.items() if choice is not None}
        hypothesis = "; ".join(f"{name} {literal(config[name])} -> {literal(changes[name])}"
                               for name in changed)
        key = _identity(code_key, trained)
        self.study.enqueue_trial(params, user_attrs={"base": base_key, "train_py": key,
                                                     "changes": hypothesis})
        trial = self.study.ask()
        while trial.user_attrs.get("train_py") != key:  # enqueued by a process killed before it could ask
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            trial = self.study.ask()
        for name in params:  # the enqueued values: the trial records the config that will be trained
            trial.suggest_categorical(name, self.choices[name])
        self._asked[trial.number] = trial
        self.seen.add(key)
        return Proposal(train_py=text, hypothesis=f"{hypothesis} ({source}, trial {trial.number})",
                        direction=" + ".join(dict.fromkeys(map(search_space.direction_of, changed))),
                        key=str(trial.number))

    def observe(self, outcome: Outcome) -> None:
        """Tell the study a proposal's strict F1 (mean over its trials); a failure is told FAILURE_F1."""
        if not outcome.key.isdigit():
            return
        number = int(outcome.key)
        trials = self.study.get_trials(deepcopy=False)
        if number >= len(trials) or trials[number].state != optuna.trial.TrialState.RUNNING:
            return  # not ours, or told already
        # A trial asked before a restart: Optuna has no public way from a number to a live Trial.
        trial = self._asked.pop(number, None) or optuna.trial.Trial(self.study, trials[number]._trial_id)
        scored = outcome.status in SCORED_STATUSES and outcome.strict_f1 is not None
        trial.set_user_attr("status", outcome.status)
        trial.set_user_attr("trials", outcome.trials)
        trial.set_user_attr("strict_f1", outcome.strict_f1)
        trial.set_user_attr("best_strict_f1", outcome.best_strict_f1)
        self.study.tell(trial, float(outcome.strict_f1) if scored else FAILURE_F1)
