"""The anthropic agent inside the loop: the real client drives a night through the fake Messages API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_anthropic import FakeAnthropic, message, text, tool_use

from research_loop.agents.anthropic_agent import AnthropicAgent

MODEL = "claude-sonnet-5-5"


@pytest.fixture
def serve(monkeypatch):
    """serve(script) -> a running FakeAnthropic that the SDK talks to."""
    servers = []

    def start(script: list[dict]) -> FakeAnthropic:
        fake = FakeAnthropic(script).start()
        fake.install(monkeypatch)
        servers.append(fake)
        return fake

    yield start
    for fake in servers:
        fake.stop()


def make_agent(repo: Path, **options) -> AnthropicAgent:
    return AnthropicAgent(model=MODEL, repo=repo, **options)


def edit(old: str, new: str, block_id: str | None = None) -> dict:
    return tool_use("edit_train", {"old": old, "new": new}, block_id)


def submit(hypothesis="Raise the learning rate: 2e-5 underfits in 5 epochs.", direction="learning rate"):
    return tool_use("submit", {"hypothesis": hypothesis, "direction": direction})


def test_a_night_with_the_anthropic_agent_through_the_fake_api(tmp_path, prepared_task7, serve):
    """The loop drives the real client: a good edit is trained and kept, with its tokens and cost in
    results.tsv; a later edit that does not compile never reaches training; an agent that then gives up
    ends the night with an error, not a crash."""
    from loop_helpers import make_repo, results

    from research_loop.acceptance import Monotonic
    from research_loop.loop import LoopConfig, run_dir, run_loop

    project = make_repo(tmp_path, prepared_task7)
    fake = serve([
        message(edit("QUALITY = 0.5", "QUALITY = 0.9")), message(submit("Tag more rows.", "quality")),
        message(edit("def main():", "def main(:")), message(submit("Broken on purpose.", "quality")),
        message(text("I give up.")), message(text("Still giving up.")),
    ])
    config = LoopConfig(repo=project, tag="t", max_runs=3, timeout_s=30, kill_grace_s=1, progress=False,
                        policy=Monotonic(seed=42), agent_retry_s=0.01, agent_max_failures=1)
    summary = run_loop(config, make_agent(project))

    rows = results(project)
    assert [row["status"] for row in rows] == ["baseline", "keep"]
    assert rows[1]["description"] == "Tag more rows." and float(rows[1]["cost_usd"]) > 0
    assert int(rows[1]["tokens_in"]) > 0 and int(rows[1]["tokens_out"]) > 0
    assert "QUALITY = 0.9" in (project / "train.py").read_text()
    assert "does not compile" in json.dumps(fake.requests[4])  # the submit of the broken file went back
    assert not run_dir(project, "t", 2).exists()  # and nothing was trained for it
    assert not summary.ok and "agent" in summary.stop_reason
