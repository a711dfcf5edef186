"""The LLM agent against a local fake of the Messages API: tools, safety, retries, caching, usage."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import pytest
from fake_anthropic import BAD_KEY, OVERLOADED, RATE_LIMITED, FakeAnthropic, error, message, text, tool_use

from research_loop.agent_tools import ToolSession, count_occurrences, normalise_request
from research_loop.agents import AgentError, Context
from research_loop.anthropic_agent import LAST_TURN, MODEL_PRICES, AnthropicAgent, check_api_key

MODEL = "claude-sonnet-5-5"
# Published Sonnet 5.5 prices per million tokens (platform.claude.com pricing page): input, output,
# 5-minute cache write, cache read. Written out here so the cost test does not trust MODEL_PRICES.
SONNET_5_5_PRICES = (2.00, 10.00, 2.50, 0.20)

TRAIN_PY = '''"""Fine-tune a token classifier for BIO NER; prints a --- block of key: value lines."""

import argparse

# ----- Config -----
MODEL_NAME = "microsoft/deberta-v3-large"  # encoder checkpoint
LEARNING_RATE = 2e-5  # peak learning rate
EPOCHS = 5  # passes over the training data
BATCH_SIZE = 8  # sequences per optimizer step
WARMUP_RATIO = 0.1  # fraction of steps with a rising learning rate
LABEL_SMOOTHING = 0.1  # cross-entropy label smoothing
SEED = 42  # random seed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args()
    print("---")
    print(f"strict_f1: {0.0:.4f}")
    print(f"epochs: {args.epochs}")


if __name__ == "__main__":
    main()
'''
RESULTS_TSV = "run\tstrict_f1\tstatus\n0002\t0.4120\tkeep\n"
LR_LINE = "LEARNING_RATE = 2e-5  # peak learning rate"
NEW_LR_LINE = "LEARNING_RATE = 3e-5  # peak learning rate"
GOLD_SECRET = "GOLD-SECRET-d41d8cd9"
OUTSIDE_SECRET = "OUTSIDE-SECRET-8f00b204"
LOG_TEXT = "epoch 1 loss 0.53\nTraceback (most recent call last):\nRuntimeError: CUDA out of memory\n"


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A repository with the readable files, plus things the agent must never read."""
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    (root / "runs" / "0003").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "train.py").write_text(TRAIN_PY)
    (root / "program.md").write_text("# program\nImprove strict F1 on val. Prefer small changes.\n")
    (root / "CURRENT_STATE.md").write_text("# State\nBest strict F1 0.412 (run 0002).\n")
    (root / "results.tsv").write_text(RESULTS_TSV)
    (root / "prepare.py").write_text('"""Data layer."""\nDATA_DIR = "data"\n')
    (root / "evaluate.py").write_text('"""Scorer."""\n\ndef score(gold, pred):\n    return {}\n')
    (root / "data" / "holdout.jsonl").write_text('{"id": "dev_1", "tokens": ["a"]}\n')
    (root / ".git" / "config").write_text(f"[core]\n# {OUTSIDE_SECRET}\n")
    (root / "runs" / "0003" / "run.log").write_text(LOG_TEXT)
    (tmp_path / "evaluate.py").write_text(f"# {OUTSIDE_SECRET}\n")  # what ../evaluate.py would open
    cache = tmp_path / "cache"
    monkeypatch.setenv("NER_AUTORESEARCH_CACHE", str(cache))
    gold = holdout_gold_path(root / "data")
    gold.parent.mkdir(parents=True)
    gold.write_text(json.dumps({"id": "dev_1", "tags": ["B-ClinicalImpacts"], "note": GOLD_SECRET}) + "\n")
    return root


def holdout_gold_path(data_dir: Path) -> Path:
    """prepare.holdout_gold_path when prepare.py is importable, else the contract's path."""
    try:
        from prepare import holdout_gold_path as from_prepare
    except ImportError:
        digest = hashlib.sha256((data_dir / "holdout.jsonl").read_bytes()).hexdigest()
        return Path(os.environ["NER_AUTORESEARCH_CACHE"]) / "holdout" / f"{digest}.jsonl"
    return from_prepare(data_dir)


def make_context(repo: Path, **overrides) -> Context:
    fields = {
        "repo": repo,
        "program_md": (repo / "program.md").read_text(),
        "current_state_md": (repo / "CURRENT_STATE.md").read_text(),
        "recent_results": RESULTS_TSV,
        "train_py": TRAIN_PY,
        "last_log_path": repo / "runs" / "0003" / "run.log",
    }
    fields.update(overrides)
    return Context(**fields)


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
    settings = {"backoff_base_s": 0.001, "backoff_cap_s": 0.01, "give_up_after_s": 5.0}
    settings.update(options)
    return AnthropicAgent(model=MODEL, repo=repo, **settings)


def edit(old: str, new: str, block_id: str | None = None) -> dict:
    return tool_use("edit_train", {"old": old, "new": new}, block_id)


def submit(hypothesis="Raise the learning rate: 2e-5 underfits in 5 epochs.", direction="learning rate"):
    return tool_use("submit", {"hypothesis": hypothesis, "direction": direction})


def tool_results(request: dict) -> list[dict]:
    """The tool_result blocks of a request's newest (user) message."""
    return [block for block in request["messages"][-1]["content"] if block.get("type") == "tool_result"]


def good_script() -> list[dict]:
    return [message(text("Trying a higher LR."), edit(LR_LINE, NEW_LR_LINE)), message(submit())]


# ----- proposals -----


def test_edit_then_submit_returns_the_edited_file_and_sums_usage(repo, serve):
    second_usage = {"input_tokens": 50, "output_tokens": 100, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 3000}
    fake = serve([good_script()[0], message(submit(), usage=second_usage)])
    agent = make_agent(repo)

    proposal = agent.propose(make_context(repo))

    assert proposal.train_py == TRAIN_PY.replace(LR_LINE, NEW_LR_LINE)
    assert proposal.hypothesis == "Raise the learning rate: 2e-5 underfits in 5 epochs."
    assert proposal.direction == "learning rate"
    assert (repo / "train.py").read_text() == TRAIN_PY, "the agent must never write files"
    usage = proposal.usage
    assert (usage.calls, usage.input_tokens, usage.output_tokens) == (2, 1050, 300)
    assert (usage.cache_write_tokens, usage.cache_read_tokens) == (3000, 3000)
    price_in, price_out, price_write, price_read = SONNET_5_5_PRICES
    expected = (1050 * price_in + 300 * price_out + 3000 * price_write + 3000 * price_read) / 1e6
    assert usage.cost_usd == pytest.approx(expected)
    assert agent.total_usage.cost_usd == pytest.approx(expected)
    [result] = tool_results(fake.requests[1])
    assert result["is_error"] is False and result["content"].startswith("ok")


def test_first_request_carries_the_prompt_tools_and_model(repo, serve):
    fake = serve(good_script())
    make_agent(repo).propose(make_context(repo, feedback="duplicate of run 0002", last_log_tail=LOG_TEXT))

    first = fake.requests[0]
    assert first["model"] == MODEL
    assert [tool["name"] for tool in first["tools"]] == ["view_file", "edit_train", "submit"]
    system_text = "\n".join(block["text"] for block in first["system"])
    assert "Prefer small changes." in system_text  # program.md
    [user] = first["messages"]
    user_text = "\n".join(block["text"] for block in user["content"])
    for expected in (TRAIN_PY, "Best strict F1 0.412", "0002\t0.4120\tkeep", "duplicate of run 0002", "CUDA out"):
        assert expected in user_text


def test_prompt_caching_marks_tools_system_and_conversation(repo, serve):
    fake = serve(good_script())
    make_agent(repo).propose(make_context(repo))

    first, second = fake.requests
    assert first["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert first["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert first["messages"][0]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert second["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert all(json.dumps(request).count('"cache_control"') <= 4 for request in fake.requests)
    # the cached prefix must not change between calls of one proposal
    assert first["system"] == second["system"] and first["tools"] == second["tools"]


def test_edit_matching_twice_is_refused_then_corrected(repo, serve):
    ambiguous = "= 0.1  #"  # WARMUP_RATIO and LABEL_SMOOTHING
    fake = serve([
        message(edit(ambiguous, "= 0.05  #")),
        message(edit("LABEL_SMOOTHING = 0.1  #", "LABEL_SMOOTHING = 0.05  #")),
        message(submit("Less label smoothing sharpens boundaries.", "loss")),
    ])
    proposal = make_agent(repo).propose(make_context(repo))

    [refused] = tool_results(fake.requests[1])
    assert refused["is_error"] is True and "matches 2 times" in refused["content"]
    assert "LABEL_SMOOTHING = 0.05  #" in proposal.train_py
    assert "WARMUP_RATIO = 0.1  #" in proposal.train_py
    assert proposal.direction == "loss"


def test_edit_matching_nothing_says_so(repo, serve):
    fake = serve([message(edit("LEARNING_RATE = 1e-3", "LEARNING_RATE = 1e-4")), *good_script()])
    make_agent(repo).propose(make_context(repo))
    [refused] = tool_results(fake.requests[1])
    assert refused["is_error"] is True and "matches 0 times" in refused["content"]


# ----- view_file safety -----


def test_view_file_refuses_everything_outside_the_allowlist(repo, serve):
    forbidden = [
        "../evaluate.py",
        str(repo / "train.py"),  # absolute, even for an allowed file
        "/etc/passwd",
        str(holdout_gold_path(repo / "data")),
        "~/.cache/ner-autoresearch/holdout",
        "data/holdout.jsonl",
        ".git/config",
        "research_loop/agents.py",
        "runs/../../evaluate.py",
        "train.py/../../evaluate.py",
        "",
    ]
    fake = serve([message(*[tool_use("view_file", {"path": path}) for path in forbidden]), *good_script()])
    make_agent(repo).propose(make_context(repo))

    results = tool_results(fake.requests[1])
    assert len(results) == len(forbidden)
    assert all(result["is_error"] is True for result in results), results
    everything_sent = fake.all_requests_text()
    assert GOLD_SECRET not in everything_sent
    assert OUTSIDE_SECRET not in everything_sent
    assert "root:" not in everything_sent


def test_view_file_refuses_an_allowed_name_that_symlinks_out(repo, serve):
    (repo / "results.tsv").unlink()
    (repo / "results.tsv").symlink_to(holdout_gold_path(repo / "data"))
    fake = serve([message(tool_use("view_file", {"path": "results.tsv"})), *good_script()])
    make_agent(repo).propose(make_context(repo))

    [result] = tool_results(fake.requests[1])
    assert result["is_error"] is True and "symbolic link" in result["content"]
    assert GOLD_SECRET not in fake.all_requests_text()


def test_view_file_reads_allowed_files_and_the_last_log(repo, serve):
    paths = ["results.tsv", "./evaluate.py", "run.log", "runs/0003/run.log", "train.py"]
    fake = serve([
        message(edit(LR_LINE, NEW_LR_LINE)),
        message(*[tool_use("view_file", {"path": path}) for path in paths]),
        message(submit()),
    ])
    make_agent(repo).propose(make_context(repo))

    results = tool_results(fake.requests[2])
    assert [result["is_error"] for result in results] == [False] * len(paths)
    contents = [result["content"] for result in results]
    assert contents[0] == (repo / "results.tsv").read_text()
    assert contents[1] == (repo / "evaluate.py").read_text()
    assert contents[2] == contents[3] == LOG_TEXT
    assert NEW_LR_LINE in contents[4], "train.py is the working copy, edits included"


def test_missing_log_and_missing_results_are_errors_not_crashes(repo, serve):
    (repo / "results.tsv").unlink()
    fake = serve([
        message(tool_use("view_file", {"path": "results.tsv"}), tool_use("view_file", {"path": "run.log"})),
        *good_script(),
    ])
    make_agent(repo).propose(make_context(repo, last_log_path=None))
    results = tool_results(fake.requests[1])
    assert [result["is_error"] for result in results] == [True, True]
    assert "does not exist yet" in results[0]["content"]


# ----- bad tool calls -----


def test_unknown_tools_and_arguments_get_error_results(repo, serve):
    fake = serve([
        message(
            tool_use("run_shell", {"cmd": "cat /etc/passwd"}),
            tool_use("view_file", {"path": "train.py", "mode": "w"}),
            tool_use("edit_train", {"old": LR_LINE}),
            tool_use("edit_train", {"old": LR_LINE, "new": 3}),
        ),
        *good_script(),
    ])
    proposal = make_agent(repo).propose(make_context(repo))

    results = tool_results(fake.requests[1])
    assert all(result["is_error"] for result in results)
    assert "unknown tool 'run_shell'" in results[0]["content"]
    assert "unknown argument(s) mode" in results[1]["content"]
    assert "missing argument(s) new" in results[2]["content"]
    assert "must be strings" in results[3]["content"]
    assert proposal.train_py == TRAIN_PY.replace(LR_LINE, NEW_LR_LINE)


def test_submit_without_a_change_is_sent_back_once(repo, serve):
    fake = serve([message(submit()), *good_script()])
    proposal = make_agent(repo).propose(make_context(repo))
    [result] = tool_results(fake.requests[1])
    assert result["is_error"] is True and "unchanged" in result["content"]
    assert proposal.train_py != TRAIN_PY


def test_submit_without_a_change_twice_is_an_agent_error(repo, serve):
    serve([message(submit()), message(submit())])
    with pytest.raises(AgentError, match="unchanged twice"):
        make_agent(repo).propose(make_context(repo))


def test_submit_of_a_file_that_does_not_compile_is_sent_back(repo, serve):
    fake = serve([
        message(edit(LR_LINE, "LEARNING_RATE = = 3e-5")),
        message(submit()),
        message(edit("LEARNING_RATE = = 3e-5", NEW_LR_LINE)),
        message(submit()),
    ])
    proposal = make_agent(repo).propose(make_context(repo))
    [result] = tool_results(fake.requests[2])
    assert result["is_error"] is True and "does not compile: line 7" in result["content"]
    assert NEW_LR_LINE in proposal.train_py


def test_stopping_without_submit_is_nudged_once_then_fails(repo, serve):
    fake = serve([message(text("I think the LR is fine.")), *good_script()])
    assert make_agent(repo).propose(make_context(repo)).direction == "learning rate"
    assert "without calling submit" in fake.requests[1]["messages"][-1]["content"][0]["text"]

    serve([message(text("Nothing to do.")), message(text("Really nothing."))])
    with pytest.raises(AgentError, match="stopped twice without calling submit"):
        make_agent(repo).propose(make_context(repo))


def test_turn_limit_is_an_agent_error_with_usage(repo, serve):
    fake = serve([message(tool_use("view_file", {"path": "train.py"})) for _ in range(5)])
    with pytest.raises(AgentError, match="no submit after 3 turns") as raised:
        make_agent(repo, max_turns=3).propose(make_context(repo))
    assert len(fake.requests) == 3
    assert fake.requests[2]["messages"][-1]["content"][-1]["text"] == LAST_TURN
    assert raised.value.usage.calls == 3


def test_cost_cap_stops_the_proposal(repo, serve):
    # the default fake usage costs 1000*$2 + 200*$10 + 3000*$2.50 per million = $0.0115 a call
    fake = serve([message(tool_use("view_file", {"path": "train.py"})) for _ in range(5)])
    agent = make_agent(repo, max_cost_usd_per_proposal=0.02)
    with pytest.raises(AgentError, match="passed the cap of \\$0.02") as raised:
        agent.propose(make_context(repo))
    assert len(fake.requests) == 2
    assert raised.value.usage.cost_usd == pytest.approx(0.023)
    assert agent.total_usage.calls == 2


# ----- API errors and retries -----


def test_overload_is_retried_and_the_proposal_succeeds(repo, serve):
    fake = serve([OVERLOADED, *good_script()])
    proposal = make_agent(repo).propose(make_context(repo))
    assert proposal.direction == "learning rate"
    assert len(fake.requests) == 3
    assert proposal.usage.calls == 2


def test_rate_limit_is_retried_and_the_proposal_succeeds(repo, serve):
    fake = serve([RATE_LIMITED, *good_script()])
    assert make_agent(repo).propose(make_context(repo)).train_py != TRAIN_PY
    assert len(fake.requests) == 3


def test_outer_backoff_outlasts_the_sdk_retries(repo, serve):
    fake = serve([OVERLOADED, error(503, "api_error", "upstream"), OVERLOADED, *good_script()])
    proposal = make_agent(repo, sdk_max_retries=0).propose(make_context(repo))
    assert proposal.direction == "learning rate"
    assert len(fake.requests) == 5


def test_a_long_outage_gives_up_with_an_agent_error(repo, serve):
    serve([OVERLOADED] * 200)
    with pytest.raises(AgentError, match="unavailable .* overloaded_error"):
        make_agent(repo, sdk_max_retries=0, backoff_base_s=0.01, give_up_after_s=0.1).propose(make_context(repo))


def test_rejected_key_fails_at_once_without_retries(repo, serve):
    fake = serve([BAD_KEY, *good_script()])
    with pytest.raises(AgentError, match="rejected the API key") as raised:
        make_agent(repo).propose(make_context(repo))
    assert "invalid x-api-key" in str(raised.value)
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    "reply",
    [
        error(400, "invalid_request_error", "max_tokens: must be positive"),
        error(403, "permission_error", "no access to this model"),
        {**error(429, "rate_limit_error", "monthly spend cap reached"),
         "body": {"type": "error", "error": {"type": "rate_limit_error", "message": "monthly spend cap reached",
                                             "details": {"error_code": "enforced_spend_limit_reached"}}},
         "headers": {"x-should-retry": "false"}},
    ],
)
def test_request_errors_are_not_retried(repo, serve, reply):
    fake = serve([reply, *good_script()])
    message_text = reply["body"]["error"]["message"]
    with pytest.raises(AgentError, match=message_text):
        make_agent(repo).propose(make_context(repo))
    assert len(fake.requests) == 1


def test_unreachable_api_gives_up_with_an_agent_error(repo, monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-dummy")
    agent = make_agent(repo, sdk_max_retries=0, backoff_base_s=0.01, give_up_after_s=0.1)
    with pytest.raises(AgentError, match="unavailable .*APIConnectionError"):
        agent.propose(make_context(repo))


# ----- configuration -----


def test_check_api_key_names_the_builtin_agent(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(AgentError, match="ANTHROPIC_API_KEY is not set.*--agent builtin"):
        check_api_key()
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-dummy")
    check_api_key()


def test_model_allowlist(repo, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-dummy")
    assert MODEL in MODEL_PRICES
    assert all(len(price) == 4 and price.cache_read < price.input < price.cache_write < price.output
               for price in MODEL_PRICES.values())
    with pytest.raises(AgentError, match="unknown model 'gpt-4'"):
        AnthropicAgent(model="gpt-4", repo=repo)


# ----- the tool functions without HTTP -----


def test_paths_are_normalised_before_the_allowlist():
    assert normalise_request("./train.py") == "train.py"
    assert normalise_request("runs//0003/./run.log") == "runs/0003/run.log"
    for bad in ("../x", "/abs", "~/x", "C:\\x", "a/../../b", "a\\..\\b"):
        with pytest.raises(Exception, match="not allowed"):
            normalise_request(bad)


def test_overlapping_matches_count_as_ambiguous(repo):
    assert count_occurrences("aaa", "aa") == 2
    session = ToolSession(repo, "x = 'aaa'\n")
    result = session.call("edit_train", {"old": "aa", "new": "b"})
    assert result.is_error and "matches 2 times" in result.content


def test_propose_without_a_key_is_an_agent_error_not_a_crash(repo, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-dummy")
    agent = make_agent(repo)
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(AgentError, match="--agent builtin"):
        agent.propose(make_context(repo))


def test_edit_and_submit_in_one_reply_is_one_call(repo, serve):
    fake = serve([message(edit(LR_LINE, NEW_LR_LINE), submit())])
    proposal = make_agent(repo).propose(make_context(repo))
    assert proposal.train_py == TRAIN_PY.replace(LR_LINE, NEW_LR_LINE)
    assert proposal.usage.calls == 1 and len(fake.requests) == 1


# ----- the agent inside the loop -----


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
