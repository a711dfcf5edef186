"""Each agent drives a 3-proposal night end to end through its own fake, with the real SDK client; and no
malformed input from an agent ends a night."""

from __future__ import annotations

import json

import pytest
from fake_anthropic import FakeAnthropic, message, raw, tool_use
from fake_openai import FakeOpenAI, completion, tool_call
from loop_helpers import ScriptedAgent, loop_config, make_repo, results

from research_loop.agents.base import Proposal
from research_loop.loop import run_loop

TAG = "t"


@pytest.fixture
def repo(tmp_path, prepared_task7):
    return make_repo(tmp_path, prepared_task7)


def night(repo, agent, runs=4, **overrides):
    settings = {"max_runs": runs, "timeout_s": 30, "agent_max_failures": 3, "close_after": 0, **overrides}
    return run_loop(loop_config(repo, TAG, **settings), agent)


def edits(values):
    return [("QUALITY = 0.5", f"QUALITY = {value}") for value in values]


def test_a_night_with_the_anthropic_agent_through_the_fake_api(repo, monkeypatch):
    """A good edit is trained and kept with its tokens and cost; a malformed HTTP-200 body is an agent
    error the loop waits out; an edit that does not compile never reaches training."""
    from research_loop.agents.anthropic_agent import AnthropicAgent

    script = [message(tool_use("edit_train", {"old": "QUALITY = 0.5", "new": "QUALITY = 0.9"})),
              message(tool_use("submit", {"hypothesis": "Tag more rows.", "direction": "quality"})),
              raw("{this is not json"),
              message(tool_use("edit_train", {"old": "QUALITY = 0.9", "new": "QUALITY = 0.95"}),
                      tool_use("submit", {"hypothesis": "More.", "direction": "quality"})),
              message(tool_use("edit_train", {"old": "def main():", "new": "def main(:"})),
              message(tool_use("submit", {"hypothesis": "Broken on purpose.", "direction": "quality"})),
              message(tool_use("edit_train", {"old": "def main(:", "new": "def main():"}),
                      tool_use("edit_train", {"old": "QUALITY = 0.9", "new": "QUALITY = 0.2"}),
                      tool_use("submit", {"hypothesis": "Fewer.", "direction": "quality"}))]
    with FakeAnthropic(script) as fake:
        fake.install(monkeypatch)
        summary = night(repo, AnthropicAgent(model="claude-sonnet-5-5", repo=repo))
    rows = results(repo)
    assert [row["status"] for row in rows] == ["baseline", "keep", "discard", "discard"], summary.stop_reason
    assert [row["description"] for row in rows[1:]] == ["Tag more rows.", "More.", "Fewer."]
    assert float(rows[1]["cost_usd"]) > 0
    assert int(rows[1]["tokens_in"]) > 0 and int(rows[1]["tokens_out"]) > 0
    assert "does not compile" in json.dumps(fake.requests[-1])  # the broken submit went back to the model
    assert summary.ok


def test_a_night_with_an_openai_compatible_local_model(repo):
    from research_loop.agents.openai_agent import OpenAIAgent

    script = [completion(content="I think I should raise QUALITY."),  # text instead of a tool call
              completion(tool_call("edit_train", '{"old": "QUALITY = 0.5", "new": "QUALITY = 0.9"')),  # bad JSON
              completion(tool_call("edit_train", {"old": "QUALITY = 0.5", "new": "QUALITY = 0.9"}),
                         tool_call("submit", {"hypothesis": "more rows", "direction": "quality"})),
              completion(tool_call("edit_train", {"old": "QUALITY = 0.9", "new": "QUALITY = 0.3"}),
                         tool_call("submit", {"hypothesis": "fewer rows", "direction": "quality"})),
              completion(tool_call("edit_train", {"old": "QUALITY = 0.9", "new": "QUALITY = 0.8"}),
                         tool_call("submit", {"hypothesis": "a few fewer", "direction": "quality"}))]
    with FakeOpenAI(script) as fake:
        summary = night(repo, OpenAIAgent("local-model", repo, base_url=fake.url))
    rows = results(repo)
    assert [row["status"] for row in rows] == ["baseline", "keep", "discard", "discard"], summary.stop_reason
    assert rows[1]["cost_usd"] == ""  # an unpriced local model: unknown, not $0
    assert summary.cost_unknown and "(and some not priced)" in (repo / "CURRENT_STATE.md").read_text()


def test_a_night_with_claude_code_through_a_fake_transport(repo):
    from fake_claude_code import FakeClaudeCode, tool_use, turn

    from research_loop.agents.claude_code_agent import ClaudeCodeAgent

    def session(old, new, hypothesis):
        return FakeClaudeCode([turn(tool_use("mcp__ner__edit_train", {"old": old, "new": new}),
                                    tool_use("mcp__ner__submit", {"hypothesis": hypothesis, "direction": "quality"}))])

    sessions = [session("QUALITY = 0.5", "QUALITY = 0.9", "more rows"),
                session("QUALITY = 0.9", "QUALITY = 0.3", "fewer rows"),
                session("QUALITY = 0.9", "QUALITY = 0.8", "a few fewer")]
    agent = ClaudeCodeAgent(repo=repo, transport_factory=lambda options: sessions.pop(0).connect_with(options))
    summary = night(repo, agent)
    rows = results(repo)
    assert [row["status"] for row in rows] == ["baseline", "keep", "discard", "discard"], summary.stop_reason
    assert float(rows[1]["cost_usd"]) > 0  # the SDK's total_cost_usd


def test_a_night_with_the_optuna_baseline(repo, prepared_task7):
    import prepare
    from research_loop.agents.optuna_agent import OptunaAgent

    agent = OptunaAgent(prepare.load_labels(prepared_task7), prepare.load_entity_types(prepared_task7), seed=0,
                        storage=repo / "runs" / TAG / "optuna.db")
    summary = night(repo, agent)
    rows = results(repo)
    assert len(rows) == 4 and {row["status"] for row in rows[1:]} <= {"keep", "discard"}, summary.stop_reason
    assert all("Optuna" in row["description"] for row in rows[1:])
    assert len(agent.study.trials) == 3  # every outcome was told


def test_no_malformed_proposal_ends_the_night(repo):
    """A lone surrogate, a NUL, control characters, a crash inside the agent: rows or retries, never a traceback."""
    base = (repo / "train.py").read_text()

    class Messy(ScriptedAgent):
        def propose(self, context):
            step = len(self.contexts)
            if step == 0:
                self.contexts.append(context)
                return Proposal(train_py=base + "# \ud800 a lone surrogate\n", hypothesis="h", direction="d")
            if step == 1:
                self.contexts.append(context)
                return Proposal(train_py=base + "# nul\n", hypothesis="a NUL\x00 in the hypothesis", direction="d")
            if step == 2:
                self.contexts.append(context)
                return Proposal(train_py=base + "# bell\n", hypothesis="fine", direction="a\x07bell")
            if step == 3:  # "Trojan Source": code that reads differently from how it runs
                self.contexts.append(context)
                return Proposal(train_py=base + 'EPOCHS = 1  # \u202e } \u2066 if admin:\n', hypothesis="h", direction="e")
            if step == 4:
                self.contexts.append(context)
                raise ValueError("a bug inside the agent")
            return super().propose(context)

    summary = night(repo, Messy([("QUALITY", 0.9)]), runs=6)
    rows = results(repo)
    assert [row["status"] for row in rows] == ["baseline", "invalid", "invalid", "invalid", "invalid", "keep"], summary
    assert "lone surrogate" in rows[1]["note"] and "control character" in rows[2]["note"]
    assert "control character" in rows[3]["note"] and "\x00" not in (repo / "results.tsv").read_text()
    assert "control character '\\u202e'" in rows[4]["note"] and "\u202e" not in (repo / "results.tsv").read_text()
    assert summary.ok


def test_test_rows_are_predicted_only_for_runs_that_can_be_kept(tmp_path, prepared_task7):
    """Discarded runs skip the long test rows; the baseline (kept) and confirmed runs predict them."""
    from loop_helpers import FAKE_TRAIN_PY

    from research_loop.evaluation.acceptance import make_policy

    repo = make_repo(tmp_path, prepared_task7, FAKE_TRAIN_PY.replace("PREDICT_TEST = False", "PREDICT_TEST = True"))
    run_loop(loop_config(repo, TAG, max_runs=5, policy=make_policy("confirm")),
             ScriptedAgent([("QUALITY", 0.3), ("QUALITY", 0.4), ("QUALITY", 0.2), ("QUALITY", 0.9)]))
    rows = results(repo)
    folders = {row["run"]: sorted(path.relative_to(repo / "runs" / TAG / f"{int(row['run']):04d}").as_posix()
                                  for path in (repo / "runs" / TAG / f"{int(row['run']):04d}").rglob("pred_test.csv"))
               for row in rows}
    assert folders["0"] == ["pred_test.csv"]
    for row in rows[1:]:
        if row["seeds"] == "42":  # screened out after one seed
            assert folders[row["run"]] == [], row
    kept = [row for row in rows if row["status"] == "keep"]
    assert kept and all(folders[row["run"]] == ["seed-43/pred_test.csv"] for row in kept)


def test_a_tracked_night_is_in_mlflow(repo, tmp_path):
    """--mlflow: the night is the parent run, each row a nested run with the config as params and the scores
    as metrics, read back through MLflow's own client (what `mlflow ui` shows)."""
    from mlflow.tracking import MlflowClient

    from research_loop.records.tracking import make_tracker

    warnings = []
    tracker = make_tracker(None, True, repo, repo / "runs" / TAG / "mlflow.json", warnings.append)
    run_loop(loop_config(repo, TAG, max_runs=3, tracker=tracker), ScriptedAgent([("QUALITY", 0.9), ("QUALITY", 0.2)]))
    assert warnings == []
    client = MlflowClient(tracking_uri=tracker.uri)
    experiment = client.get_experiment_by_name(f"ner-autoresearch/{repo.name}")
    runs = client.search_runs([experiment.experiment_id])
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId")]
    assert len(runs) == 4 and len(children) == 3
    by_status = {run.data.tags["status"]: run for run in children}
    assert set(by_status) == {"baseline", "keep", "discard"} and by_status["keep"].data.tags["kept"] == "true"
    assert by_status["keep"].data.params["QUALITY"] == "0.9"
    assert by_status["keep"].data.metrics["strict_f1"] == pytest.approx(float(results(repo)[1]["strict_f1"]), abs=1e-6)
