"""The three extension points, as the README's "Extending" section shows them: a toy acceptance policy, a toy
agent backend and a toy sandbox backend, each defined here and added with one registry entry, run a real
night through the same entry point as `python agent_loop.py`."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from loop_helpers import ScriptedAgent, make_repo, results

from research_loop.agents import registry
from research_loop.cli import commands as cli_support
from research_loop.evaluation import acceptance
from research_loop.evaluation.acceptance import Verdict
from research_loop.execution import sandbox


@dataclass(frozen=True)
class KeepEverything:
    """A toy policy: one trial, and every run that scored is kept, better or not."""

    name: str = "keep-everything"
    trials: int = 1
    paired: bool = False
    screens: bool = False

    def detectable_gain(self, sd: float) -> float | None:
        return None

    def decide(self, scores, keys, standing) -> Verdict:
        if 0 not in scores:
            return Verdict("run", (0,))
        return Verdict("keep", reason=f"{scores[0]:.4f}, kept whatever it is")


@pytest.fixture
def extended(monkeypatch, tmp_path):
    marker = tmp_path / "toybox.log"

    def toybox_argv(spec):  # bubblewrap, with a line in the marker file per job
        return ["/bin/sh", "-c", f'echo job >> "{marker}"; exec "$@"', "toybox", *sandbox.bwrap_argv(spec)]

    script = [("QUALITY", 0.3), ("QUALITY", 0.2)]  # worse and worse: only this policy keeps them
    monkeypatch.setitem(acceptance.POLICIES, "keep-everything", lambda **_: KeepEverything())
    monkeypatch.setitem(registry.BACKENDS, "toy", registry.Backend(lambda options, repo: ScriptedAgent(script),
                                                                   writes_code=True))
    monkeypatch.setitem(sandbox.SANDBOXES, "toybox", sandbox.SandboxBackend(toybox_argv, "bwrap", "apt install "
                                                                            "bubblewrap"))
    return marker


def test_a_toy_policy_agent_and_sandbox_run_a_night(extended, tmp_path, prepared_task7):
    repo = make_repo(tmp_path, prepared_task7)
    printed = []
    options = cli_support.RunOptions(tag="ext", agent="toy", policy="keep-everything", sandbox="toybox",
                                     max_runs=3, lookahead=0)  # one proposal at a time: each on the last keep
    code = cli_support.run_night(repo, options, lambda line, err=False: printed.append(line))
    assert code == 0, printed
    rows = results(repo)
    assert [row["status"] for row in rows] == ["baseline", "keep", "keep"], printed
    assert max(float(row["strict_f1"]) for row in rows[1:]) < float(rows[0]["strict_f1"])  # worse, kept
    assert extended.read_text().count("job") >= 3  # every run went through the toy sandbox
    assert "kept whatever it is" in rows[2]["note"] or "kept whatever it is" in " ".join(printed)
