"""The Optuna (TPE) agent on the real train.py, driven by scripted contexts and outcomes: no training."""

import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from loop_helpers import refused_by_train_py

from research_loop.agents import search_space
from research_loop.agents.base import AgentError, Context, Outcome
from research_loop.agents.optuna_agent import FAILURE_F1, OptunaAgent
from research_loop.config_block import block_lines, set_constant, values

try:
    import optuna
except ImportError:  # the optional extra; only the test of its absence runs
    optuna = None
needs_optuna = pytest.mark.skipif(optuna is None, reason='no Optuna: pip install -e ".[optuna]"')

ROOT = Path(__file__).resolve().parents[1]
TRAIN_PY = (ROOT / "train.py").read_text()
# Task 7's labels and entity types, as prepare.py writes them (preparing the data would take seconds)
LABELS = ["O", "B-ClinicalImpacts", "I-ClinicalImpacts", "B-SocialImpacts", "I-SocialImpacts"]
TYPES = ["ClinicalImpacts", "SocialImpacts"]
OPTIONS = search_space.options(LABELS, TYPES)
BASE = values(TRAIN_PY)
KNOBS = [name for name in OPTIONS if name in BASE]  # read from the file: its config block is being regrouped
# less the knobs that can never matter here (AUX_LR and co. without auxiliary data sets)
TURNABLE = [name for name in KNOBS
            if not (search_space.inert(BASE, name) and search_space.DEPENDS_ON[name][0] not in OPTIONS)]
GOOD_RATES = (5e-5, 8e-5, 1e-4)


def context(train_py=TRAIN_PY):
    return Context(repo=ROOT, program_md="", current_state_md="", recent_results="", train_py=train_py)


def block(train_py: str) -> dict:
    """The config block's values, without parsing the whole file (tens of milliseconds a time)."""
    return values("\n".join(block_lines(train_py)))


def changed(before: str, after: str) -> dict:
    old, new = block(before), block(after)
    return {name: new[name] for name in old
            if new[name] != old[name] or type(new[name]) is not type(old[name])}


def fake_f1(train_py: str) -> float:
    """A made-up strict F1: high for a learning rate in GOOD_RATES, and a little for each knob left alone."""
    config = block(train_py)
    return (0.45 if config["LEARNING_RATE"] in GOOD_RATES else 0.30) + 0.001 * sum(
        config[name] == BASE[name] for name in KNOBS)


def drive(agent: OptunaAgent, count: int, train_py: str = TRAIN_PY) -> list:
    """`count` proposals from one best, each told its fake F1 as a screened-out run."""
    proposals = []
    for _ in range(count):
        proposal = agent.propose(context(train_py))
        agent.observe(Outcome(proposal.key, "discard", fake_f1(proposal.train_py), 1, 0.3))
        proposals.append(proposal)
    return proposals


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data folder with just the manifest train.py's check reads (labels, types, no auxiliary set)."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "manifest.json").write_text(json.dumps({"labels": LABELS, "entity_types": TYPES}))
    return folder


def accepted_by_train_py(config: dict, data_dir: Path) -> bool:
    """The real train.py's check, run in this process on its config block with `config` written in."""
    import argparse

    import runtime
    import train

    saved = {name: getattr(train, name) for name in config}
    vars(train).update(config)
    try:
        train.check(argparse.Namespace(data=data_dir))
        return True
    except runtime.ConfigError:
        return False
    finally:
        vars(train).update(saved)


@needs_optuna
def test_each_proposal_turns_one_to_three_knobs_to_values_of_the_search_space(data_dir):
    refused = refused_by_train_py(data_dir, LABELS, TYPES)
    assert refused  # B- class weights under the IO scheme, at least
    proposals = drive(OptunaAgent(LABELS, TYPES, seed=1, refused=refused), 15)
    sizes = []
    for proposal in proposals:
        changes = changed(TRAIN_PY, proposal.train_py)
        config = {**BASE, **changes}
        assert 1 <= len(changes) <= 3 and set(changes) <= set(TURNABLE), changes
        assert all(any(value == option and type(value) is type(option) for option in OPTIONS[name])
                   for name, value in changes.items())
        assert accepted_by_train_py(config, data_dir)
        assert not any(search_space.inert(config, name) for name in changes)
        # only the changed constants' lines differ, each keeping its comment
        old_lines, new_lines = TRAIN_PY.splitlines(), proposal.train_py.splitlines()
        assert len(old_lines) == len(new_lines)
        edits = [(old, new) for old, new in zip(old_lines, new_lines) if old != new]
        assert sorted(new.split(" = ")[0] for _, new in edits) == sorted(changes)
        assert all(new.split("  #")[1] == old.split("  #")[1] for old, new in edits)
        assert all(f"{name} " in proposal.hypothesis for name in changes)
        assert proposal.direction == " + ".join(dict.fromkeys(
            search_space.direction_of(name) for name in KNOBS if name in changes))
        sizes.append(len(changes))
    assert [proposal.key for proposal in proposals] == [str(number) for number in range(15)]
    assert len({proposal.train_py for proposal in proposals}) == 15
    assert {1, 2, 3} <= set(sizes)
    one_knob = drive(OptunaAgent(LABELS, TYPES, seed=1, max_knobs=1), 5)
    assert all(len(changed(TRAIN_PY, proposal.train_py)) == 1 for proposal in one_knob)


@needs_optuna
def test_nothing_is_proposed_twice_and_an_exhausted_search_stops_the_loop():
    """Two knobs: three proposals from the first best, then none from a new best (each would be a repeat)."""
    small = "".join(line for line in TRAIN_PY.splitlines(keepends=True)
                    if line.startswith(("LABEL_SCHEME =", "BOUNDARY_TRIM =")))
    agent = OptunaAgent(LABELS, TYPES, seed=0)
    proposals = [agent.propose(context(small)) for _ in range(3)]
    trim, io = ("BOUNDARY_TRIM", True), ("LABEL_SCHEME", "IO")
    assert {frozenset(changed(small, p.train_py).items()) for p in proposals} == {
        frozenset({trim}), frozenset({io}), frozenset({trim, io})}
    with pytest.raises(AgentError, match="no untried change") as error:  # the loop stops instead of waiting
        agent.propose(context(small))
    assert error.value.retryable is False
    kept = next(p.train_py for p in proposals if changed(small, p.train_py) == {"LABEL_SCHEME": "IO"})
    with pytest.raises(AgentError):  # back to the first best, or on to a train.py proposed already
        agent.propose(context(kept))


@needs_optuna
def test_the_study_learns_what_was_trained_and_how_it_went():
    agent = OptunaAgent(LABELS, TYPES, seed=2)
    proposals = [agent.propose(context()) for _ in range(6)]
    outcomes = [("keep", 0.42, 3), ("discard", 0.31, 1), ("crash", None, 1), ("timeout", None, 1),
                ("invalid", None, 0)]
    for proposal, (status, f1, trials) in zip(proposals, outcomes):
        agent.observe(Outcome(proposal.key, status, f1, trials, 0.30))
    agent.observe(Outcome(proposals[0].key, "discard", 0.99, 1, 0.30))  # told already: ignored
    agent.observe(Outcome("not-a-trial", "crash", None, 1, 0.30))

    trials = agent.study.get_trials()
    assert len(trials) == 6
    assert [trial.value for trial in trials[:5]] == [0.42, 0.31, FAILURE_F1, FAILURE_F1, FAILURE_F1]
    assert [trial.user_attrs["status"] for trial in trials[:5]] == [status for status, _, _ in outcomes]
    assert trials[5].state == optuna.trial.TrialState.RUNNING  # the one still training
    for proposal, trial in zip(proposals, trials):
        trained = block(proposal.train_py)
        recorded = {name: ast.literal_eval(choice) for name, choice in trial.params.items()}  # literal() text
        # every knob as trained, the unchanged ones included, not just what TPE drew
        assert recorded == {name: trained[name] for name in TURNABLE}


@needs_optuna
def test_a_restarted_night_continues_the_same_study(tmp_path):
    storage = tmp_path / "runs" / "night" / "optuna.sqlite3"  # its folder is made
    first = OptunaAgent(LABELS, TYPES, seed=5, storage=storage)
    before = drive(first, 5)
    in_flight = first.propose(context())  # the night is killed while this one trains

    resumed = OptunaAgent(LABELS, TYPES, seed=5, storage=storage)
    assert len(resumed.study.get_trials()) == 6
    resumed.observe(Outcome(in_flight.key, "discard", fake_f1(in_flight.train_py), 1, 0.3))
    after = drive(resumed, 5)
    assert [p.key for p in after] == [str(number) for number in range(6, 11)]
    assert [t.state for t in resumed.study.get_trials()].count(optuna.trial.TrialState.COMPLETE) == 11
    assert "Optuna TPE" in after[-1].hypothesis  # past the random start: drawn from the resumed trials

    # The same seed gives the same night, restarted or not; another seed another one.
    unbroken = drive(OptunaAgent(LABELS, TYPES, seed=5), 11)
    assert [p.train_py for p in unbroken] == [p.train_py for p in [*before, in_flight, *after]]
    other_seed = drive(OptunaAgent(LABELS, TYPES, seed=6), 2)
    assert [p.train_py for p in other_seed] != [p.train_py for p in unbroken[:2]]


@needs_optuna
def test_tpe_concentrates_on_the_learning_rates_that_score_well():
    agent = OptunaAgent(LABELS, TYPES, seed=0)
    drive(agent, 30)
    later = drive(agent, 20)
    hits = sum(block(p.train_py)["LEARNING_RATE"] in GOOD_RATES for p in later)
    # chance: a uniform proposal turns 2 knobs on average, and LEARNING_RATE to a good rate 3 times in 7
    chance = len(later) * 2 / len(TURNABLE) * len(GOOD_RATES) / (len(OPTIONS["LEARNING_RATE"]) - 1)
    assert hits >= 3 * chance, (hits, chance)


def test_without_optuna_the_project_still_imports_and_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
    name = "research_loop.agents.optuna_agent_without_optuna"
    spec = importlib.util.spec_from_file_location(name, ROOT / "research_loop/agents/optuna_agent.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[optuna\]"'):
        module.require_optuna()
    with pytest.raises(ImportError, match="optuna"):
        module.OptunaAgent(LABELS, TYPES)


@needs_optuna
def test_a_hand_set_value_outside_the_search_space_is_left_out_of_the_trial():
    hand_set = set_constant(TRAIN_PY, "LEARNING_RATE", 7e-5)
    agent = OptunaAgent(LABELS, TYPES, seed=3, max_knobs=1)
    proposals = drive(agent, 12, hand_set)
    rates = [block(proposal.train_py)["LEARNING_RATE"] for proposal in proposals]
    recorded = [trial.params.get("LEARNING_RATE") for trial in agent.study.get_trials()]
    assert recorded == [None if rate == 7e-5 else repr(rate) for rate in rates]
    assert any(rate != 7e-5 for rate in rates)


@needs_optuna
def test_a_study_from_other_data_is_refused_in_one_line():
    storage = optuna.storages.InMemoryStorage()
    drive(OptunaAgent(LABELS, TYPES, storage=storage), 1)
    other_labels = ["O", "B-Disease", "I-Disease"]  # other class-weight and threshold values
    with pytest.raises(AgentError, match="tried other values of CLASS_WEIGHTS, THRESHOLDS"):
        OptunaAgent(other_labels, ["Disease"], storage=storage)
    assert len(OptunaAgent(LABELS, TYPES, storage=storage).study.get_trials()) == 1  # the same data resumes
