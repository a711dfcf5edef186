"""The builtin random-search agent and the null agent, on the real train.py."""

import ast
from pathlib import Path

import pytest
from loop_helpers import refused_by_train_py

from prepare import load_entity_types, load_labels
from research_loop.agents.base import AgentError, Context
from research_loop.agents.builtin_agent import BuiltinAgent, NullAgent
from research_loop.config_block import normalised, read_config, set_constant

TRAIN_PY = (Path(__file__).resolve().parents[1] / "train.py").read_text()


def context(tmp_path, train_py=TRAIN_PY):
    return Context(repo=tmp_path, program_md="", current_state_md="", recent_results="", train_py=train_py)


@pytest.fixture
def agent(tmp_path, prepared_task7):
    labels, types = load_labels(prepared_task7), load_entity_types(prepared_task7)
    return BuiltinAgent(labels, types, seed=1, refused=refused_by_train_py(prepared_task7, labels, types))


def changed_constants(before: str, after: str) -> dict:
    old, new = read_config(before), read_config(after)
    return {name: (old[name][1], new[name][1]) for name in old if old[name][1] != new[name][1]}


def test_each_proposal_changes_one_constant_and_keeps_its_comment(agent, tmp_path, prepared_task7):
    proposals = [agent.propose(context(tmp_path)) for _ in range(40)]
    seen = set()
    for proposal in proposals:
        compile(proposal.train_py, "train.py", "exec")
        changed = changed_constants(TRAIN_PY, proposal.train_py)
        assert len(changed) == 1, changed
        name = next(iter(changed))
        old_lines, new_lines = TRAIN_PY.splitlines(), proposal.train_py.splitlines()
        assert len(old_lines) == len(new_lines)
        [(old_line, new_line)] = [(a, b) for a, b in zip(old_lines, new_lines) if a != b]
        assert new_line.startswith(f"{name} = ") and new_line.split("  #")[1] == old_line.split("  #")[1]
        assert proposal.direction and name in proposal.hypothesis
        seen.add(normalised(proposal.train_py))
    assert len(seen) == len(proposals)  # never the same train.py twice
    assert normalised(TRAIN_PY) not in seen
    assert len({p.direction for p in proposals}) >= 5


def test_dict_knobs_name_real_labels_and_types_until_the_search_is_exhausted(agent, tmp_path, prepared_task7):
    labels, types = set(load_labels(prepared_task7)), set(load_entity_types(prepared_task7))
    values = {"CLASS_WEIGHTS": [], "THRESHOLDS": []}
    texts = set()
    with pytest.raises(AgentError, match="every one-constant change"):
        for _ in range(500):
            proposal = agent.propose(context(tmp_path))
            texts.add(normalised(proposal.train_py))
            for name, (_, new) in changed_constants(TRAIN_PY, proposal.train_py).items():
                if name in values:
                    values[name].append(new)
    assert 50 < len(texts) < 500
    assert values["CLASS_WEIGHTS"] and values["THRESHOLDS"]
    assert all(set(weights) <= labels for weights in values["CLASS_WEIGHTS"])
    assert all(set(thresholds) <= types and all(0 < p < 1 for p in thresholds.values())
               for thresholds in values["THRESHOLDS"])


def test_same_seed_same_proposals(tmp_path, prepared_task7):
    def first_five(seed):
        agent = BuiltinAgent(load_labels(prepared_task7), load_entity_types(prepared_task7), seed=seed)
        return [agent.propose(context(tmp_path)).train_py for _ in range(5)]

    assert first_five(3) == first_five(3)
    assert first_five(3) != first_five(4)


def test_no_class_weights_for_labels_the_io_scheme_lacks(agent, tmp_path):
    """train.py's own check refuses B- weights under IO (the agent holds no rule of its own about it)."""
    assert any(entry["change"].get("LABEL_SCHEME") == "IO" and "CLASS_WEIGHTS" in entry["change"]
               for entry in agent.refused)
    io = TRAIN_PY.replace('LABEL_SCHEME = "BIO"', 'LABEL_SCHEME = "IO"', 1)
    assert read_config(io)["LABEL_SCHEME"][1] == "IO"
    weights = []
    with pytest.raises(AgentError):
        for _ in range(500):
            weights.append(read_config(agent.propose(context(tmp_path, io)).train_py)["CLASS_WEIGHTS"][1])
    assert any(weights) and not any(label.startswith("B-") for weight in weights for label in weight)


def test_null_proposal_differs_only_by_a_comment(tmp_path):
    agent = NullAgent()
    first, second = agent.propose(context(tmp_path)), agent.propose(context(tmp_path))
    assert first.direction == "null" and first.train_py != TRAIN_PY and first.train_py != second.train_py
    assert normalised(first.train_py) == normalised(TRAIN_PY) == normalised(second.train_py)
    assert first.train_py.endswith("# null proposal 1\n") and ast.parse(first.train_py)


def test_transfer_knobs_are_searched_only_when_auxiliary_sets_are_prepared(tmp_path, prepared_task7):
    def changed_names(aux_names, text=TRAIN_PY):
        agent = BuiltinAgent(load_labels(prepared_task7), load_entity_types(prepared_task7), seed=0,
                             aux_names=aux_names)
        names = {}
        with pytest.raises(AgentError):
            for _ in range(600):
                for name, (_, new) in changed_constants(text, agent.propose(context(tmp_path, text)).train_py).items():
                    names.setdefault(name, []).append(new)
        return names

    assert not set(changed_names([])) & {"AUX_DATASETS", "AUX_EPOCHS", "AUX_LR", "TRANSFER_MODE"}
    assert changed_names(["ncbi"])["AUX_DATASETS"] == [["ncbi"]]
    with_transfer = set_constant(TRAIN_PY, "AUX_DATASETS", ["ncbi"])  # the knobs that need a set come alive
    names = changed_names(["ncbi"], with_transfer)
    assert {"AUX_EPOCHS", "AUX_LR", "TRANSFER_MODE"} <= set(names) and names["AUX_DATASETS"] == [[]]
