"""Every LLM agent (anthropic, openai, claude-code) against its own local fake, through the real SDK client:
scripted sessions, bad tool calls, nudges, limits, API errors and retries, usage and cost, and the safety of
the tools. Nothing here needs a key or the network."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import fake_anthropic
import fake_claude_code
import fake_openai
import pytest
from fake_anthropic import FakeAnthropic
from fake_claude_code import FakeClaudeCode, TransportFailure
from fake_openai import FakeOpenAI

from research_loop.agents import oneshot
from research_loop.agents.anthropic_agent import MODEL_PRICES, AnthropicAgent, check_api_key
from research_loop.agents.base import AgentError, Context
from research_loop.agents.claude_code_agent import BUILTIN_TOOLS, TOOL_NAMES, ClaudeCodeAgent
from research_loop.agents.openai_agent import LOCAL_SERVER_KEY, OpenAIAgent
from research_loop.agents.prompt import CUT_OFF_NUDGE, LAST_TURN, NUDGE
from research_loop.agents.tools import ToolSession, count_occurrences, normalise_request

ANTHROPIC_MODEL = "claude-sonnet-5-5"
OPENAI_MODEL = "gpt-5.4-mini"
# Published prices per million tokens, written out so the cost tests do not trust the agents' own tables.
SONNET_5_5 = {"input": 2.00, "output": 10.00, "cache_write": 2.50, "cache_read": 0.20}
GPT_5_4_MINI = {"input": 0.75, "cached_input": 0.075, "output": 4.50}

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
HYPOTHESIS = "Raise the learning rate: 2e-5 underfits in 5 epochs."
GOLD_SECRET = "GOLD-SECRET-d41d8cd9"
OUTSIDE_SECRET = "OUTSIDE-SECRET-8f00b204"
LOG_TEXT = "epoch 1 loss 0.53\nTraceback (most recent call last):\nRuntimeError: CUDA out of memory\n"


# ----- the repository and the context -----


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
    monkeypatch.setenv("NER_AUTORESEARCH_CACHE", str(tmp_path / "cache"))
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


# ----- one script language for the three fakes -----


@dataclass(frozen=True)
class Call:
    name: str
    arguments: object  # a str is sent as it is: broken JSON where the wire format allows it


@dataclass(frozen=True)
class Turn:
    """A model turn: some text and/or tool calls."""

    calls: tuple[Call, ...] = ()
    text: str | None = None


def calls(*tool_calls: Call) -> Turn:
    return Turn(calls=tool_calls)


def says(text: str) -> Turn:
    return Turn(text=text)


def view(path: str) -> Call:
    return Call("view_file", {"path": path})


def edit(old: str = LR_LINE, new: str = NEW_LR_LINE) -> Call:
    return Call("edit_train", {"old": old, "new": new})


def submit(hypothesis: str = HYPOTHESIS, direction: str = "learning rate") -> Call:
    return Call("submit", {"hypothesis": hypothesis, "direction": direction})


def good_session() -> list[Turn]:
    return [calls(edit()), calls(submit())]


@dataclass
class Expected:
    calls: int
    tokens_in: int
    tokens_out: int
    cost_usd: float


class Backend:
    """Starts one agent's fake, builds its agent, and reads back what the model was sent."""

    name = ""
    announces_last_turn = True
    closing_turns = 0  # turns the model plays after a successful submit

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.servers = []  # the HTTP fakes to stop after the test

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    @staticmethod
    def model_turns(fake) -> int:
        return len(fake.requests)

    @staticmethod
    def everything_sent(fake) -> str:
        return fake.all_requests_text()


class AnthropicBackend(Backend):
    name = "anthropic"
    one_call_cost = (
        1000 * SONNET_5_5["input"] + 200 * SONNET_5_5["output"] + 3000 * SONNET_5_5["cache_write"]
    ) / 1e6

    def start(self, script: list) -> FakeAnthropic:
        fake = FakeAnthropic([self.native(step) for step in script]).start()
        fake.install(self.monkeypatch)
        self.servers.append(fake)
        return fake

    @staticmethod
    def native(step):
        if not isinstance(step, Turn):
            return step
        blocks = [fake_anthropic.text(step.text)] if step.text else []
        return fake_anthropic.message(
            *blocks, *[fake_anthropic.tool_use(c.name, c.arguments) for c in step.calls]
        )

    def agent(self, fake, repo: Path, **options) -> AnthropicAgent:
        return AnthropicAgent(model=ANTHROPIC_MODEL, repo=repo, **options)

    @staticmethod
    def results_after(fake, turn: int) -> list[tuple[bool, str]]:
        blocks = fake.requests[turn + 1]["messages"][-1]["content"]
        return [
            (block["is_error"], block["content"]) for block in blocks if block.get("type") == "tool_result"
        ]

    @staticmethod
    def text_after(fake, turn: int) -> str:
        blocks = fake.requests[turn + 1]["messages"][-1]["content"]
        return "\n".join(block["text"] for block in blocks if block.get("type") == "text")

    def expected(self, turns: int) -> Expected:
        return Expected(turns, turns * 4000, turns * 200, turns * self.one_call_cost)


class OpenAIBackend(Backend):
    name = "openai"
    one_call_cost = (1000 * GPT_5_4_MINI["input"] + 200 * GPT_5_4_MINI["output"]) / 1e6

    def start(self, script: list) -> FakeOpenAI:
        fake = FakeOpenAI([self.native(step) for step in script]).start()
        self.monkeypatch.setenv("OPENAI_API_KEY", "sk-test-dummy")
        self.monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        self.servers.append(fake)
        return fake

    @staticmethod
    def native(step):
        if not isinstance(step, Turn):
            return step
        return fake_openai.completion(
            *[fake_openai.tool_call(c.name, c.arguments) for c in step.calls], content=step.text
        )

    def agent(self, fake, repo: Path, **options) -> OpenAIAgent:
        return OpenAIAgent(options.pop("model", OPENAI_MODEL), repo, base_url=fake.url, **options)

    @staticmethod
    def results_after(fake, turn: int) -> list[tuple[bool, str]]:
        messages = fake.requests[turn + 1]["messages"]
        tail = []
        for message in reversed(messages):
            if message["role"] != "tool":
                break
            tail.insert(0, (message["content"].startswith("error:"), message["content"]))
        return tail

    @staticmethod
    def text_after(fake, turn: int) -> str:
        return fake.requests[turn + 1]["messages"][-1]["content"]

    def expected(self, turns: int) -> Expected:
        return Expected(turns, turns * 1000, turns * 200, turns * self.one_call_cost)


class ClaudeCodeBackend(Backend):
    name = "claude-code"
    announces_last_turn = False  # the CLI runs the turns; it enforces max_turns itself
    closing_turns = 1
    one_call_cost = fake_claude_code.DEFAULT_TURN_COST

    def start(self, script: list) -> FakeClaudeCode:
        # after a submit the model ends its turn with a word, as it would in Claude Code
        fake = FakeClaudeCode(
            [self.native(step) for step in script]
            + [fake_claude_code.turn(fake_claude_code.text("Submitted."))]
        )
        return fake

    @staticmethod
    def native(step):
        if not isinstance(step, Turn):
            return step
        blocks = [fake_claude_code.text(step.text)] if step.text else []
        return fake_claude_code.turn(
            *blocks, *[fake_claude_code.tool_use(f"mcp__ner__{c.name}", c.arguments) for c in step.calls]
        )

    def agent(self, fake, repo: Path, **options) -> ClaudeCodeAgent:
        return ClaudeCodeAgent(repo=repo, transport_factory=fake.connect_with, **options)

    @staticmethod
    def results_after(fake, turn: int) -> list[tuple[bool, str]]:
        return [(result["is_error"], result["content"]) for result in fake.tool_results[turn]]

    @staticmethod
    def text_after(fake, turn: int) -> str:
        return fake.prompts[-1]

    @staticmethod
    def model_turns(fake) -> int:
        return fake.model_turns

    @staticmethod
    def everything_sent(fake) -> str:
        return json.dumps([fake.options.system_prompt, fake.prompts, fake.tool_results])

    def expected(self, turns: int) -> Expected:
        return Expected(turns, turns * 4000, turns * 200, turns * self.one_call_cost)


BACKENDS = {backend.name: backend for backend in (AnthropicBackend, OpenAIBackend, ClaudeCodeBackend)}


@pytest.fixture(params=list(BACKENDS))
def backend(request, monkeypatch):
    made = BACKENDS[request.param](monkeypatch)
    yield made
    made.stop()


@pytest.fixture(params=["anthropic", "openai"])
def http_backend(request, monkeypatch):
    made = BACKENDS[request.param](monkeypatch)
    yield made
    made.stop()


def assert_usage(usage, expected: Expected) -> None:
    assert (usage.calls, usage.tokens_in, usage.output_tokens) == (
        expected.calls,
        expected.tokens_in,
        expected.tokens_out,
    )
    assert usage.cost_usd == pytest.approx(expected.cost_usd)


# ----- every agent: sessions and the turn policy -----


def test_a_normal_session_returns_the_edited_file_with_its_hypothesis_and_summed_usage(backend, repo):
    fake = backend.start([calls(view("train.py")), calls(edit()), calls(submit())])
    agent = backend.agent(fake, repo)

    proposal = agent.propose(make_context(repo))

    assert proposal.train_py == TRAIN_PY.replace(LR_LINE, NEW_LR_LINE)
    assert (proposal.hypothesis, proposal.direction) == (HYPOTHESIS, "learning rate")
    assert (repo / "train.py").read_text() == TRAIN_PY, "the agent must never write files"
    assert backend.results_after(fake, 0) == [(False, TRAIN_PY)]
    [(is_error, content)] = backend.results_after(fake, 1)
    assert not is_error and content.startswith("ok: replaced 1 occurrence")
    expected = backend.expected(3 + backend.closing_turns)
    assert_usage(proposal.usage, expected)


# pydantic warns when the anthropic SDK reads a tool input that is not an object
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")
def test_malformed_tool_calls_get_error_results_then_a_submit_succeeds(backend, repo):
    fake = backend.start(
        [
            calls(
                Call("run_shell", {"cmd": "cat /etc/passwd"}),  # no such tool
                Call("view_file", {"path": "train.py", "mode": "w"}),  # an argument too many
                Call("edit_train", {"old": LR_LINE}),  # one missing
                Call("edit_train", '{"old": "LEARNING_RATE = 2e-5", "new": '),  # arguments that are not JSON
            ),
            *good_session(),
        ]
    )
    proposal = backend.agent(fake, repo).propose(make_context(repo))

    results = backend.results_after(fake, 0)
    assert len(results) == 4 and all(is_error for is_error, _ in results), results
    assert "run_shell" in results[0][1]
    assert proposal.train_py == TRAIN_PY.replace(LR_LINE, NEW_LR_LINE)


def test_a_lone_surrogate_is_refused_in_one_line_and_never_sent_back(backend, repo):
    surrogate = NEW_LR_LINE + "  # \ud800"  # valid JSON ("\\ud800"), but not encodable as UTF-8
    fake = backend.start([calls(edit(new=surrogate)), *good_session()])
    proposal = backend.agent(fake, repo).propose(make_context(repo))

    [(is_error, content)] = backend.results_after(fake, 0)
    assert is_error and "\n" not in content and "lone surrogate" in content and "`new`" in content
    assert proposal.train_py == TRAIN_PY.replace(LR_LINE, NEW_LR_LINE)  # the conversation went on to a submit
    # The error names it as the ASCII text '\\ud800'; the character itself (or its JSON escape) never goes out.
    sent = backend.everything_sent(fake)
    assert "\ud800" not in sent and not re.search(r"(?<!\\)\\ud800", sent), sent


def test_an_edit_past_the_size_cap_is_refused_in_one_line(backend, repo):
    padding = "\n".join(f"# {index:06d} " + "x" * 90 for index in range(6000))  # about 600 KB of comments
    fake = backend.start([calls(edit(new=NEW_LR_LINE + "\n" + padding)), *good_session()])
    proposal = backend.agent(fake, repo).propose(make_context(repo))

    [(is_error, content)] = backend.results_after(fake, 0)
    assert is_error and "\n" not in content and "over the cap of 512 KB" in content and "not applied" in content
    assert proposal.train_py == TRAIN_PY.replace(LR_LINE, NEW_LR_LINE)  # the big edit never reached train.py


def test_a_reply_without_a_tool_call_is_nudged_once(backend, repo):
    fake = backend.start([says("I think the learning rate is fine."), *good_session()])
    proposal = backend.agent(fake, repo).propose(make_context(repo))
    assert proposal.direction == "learning rate"
    assert NUDGE in backend.text_after(fake, 0)


def test_a_second_reply_without_a_tool_call_is_an_agent_error_with_its_usage(backend, repo):
    fake = backend.start([says("Nothing to do."), says("Really nothing."), *good_session()])
    agent = backend.agent(fake, repo)
    with pytest.raises(AgentError, match="stopped twice without calling submit") as raised:
        agent.propose(make_context(repo))
    assert raised.value.retryable
    assert_usage(raised.value.usage, backend.expected(2))


def test_submitting_an_unchanged_file_is_sent_back_once(backend, repo):
    fake = backend.start([calls(submit()), *good_session()])
    proposal = backend.agent(fake, repo).propose(make_context(repo))
    [(is_error, content)] = backend.results_after(fake, 0)
    assert is_error and "unchanged" in content
    assert proposal.train_py != TRAIN_PY


def test_submitting_an_unchanged_file_twice_is_an_agent_error(backend, repo):
    fake = backend.start([calls(submit()), calls(submit()), *good_session()])
    with pytest.raises(AgentError, match="unchanged twice") as raised:
        backend.agent(fake, repo).propose(make_context(repo))
    assert raised.value.usage.calls >= 2


def test_the_cost_cap_stops_the_proposal(backend, repo):
    fake = backend.start([calls(view("train.py")) for _ in range(6)])
    cap = 1.5 * backend.one_call_cost
    agent = backend.agent(fake, repo, max_cost_usd_per_proposal=cap)
    with pytest.raises(AgentError, match="cap") as raised:
        agent.propose(make_context(repo))
    assert backend.model_turns(fake) == 2
    assert raised.value.usage.cost_usd == pytest.approx(2 * backend.one_call_cost)
    assert raised.value.usage.calls == 2


def test_the_turn_limit_is_an_agent_error_with_its_usage(backend, repo):
    fake = backend.start([calls(view("train.py")) for _ in range(5)])
    with pytest.raises(AgentError, match="no submit after 3 turns") as raised:
        backend.agent(fake, repo, max_turns=3).propose(make_context(repo))
    assert backend.model_turns(fake) == 3
    assert raised.value.usage.calls == 3
    if backend.announces_last_turn:
        assert LAST_TURN in backend.text_after(fake, 1)
        assert LAST_TURN not in backend.text_after(fake, 0)


def test_view_file_refuses_everything_outside_the_allowlist(backend, repo):
    forbidden = [
        "../evaluate.py",
        str(repo / "train.py"),  # absolute, even for an allowed file
        "/etc/passwd",
        str(holdout_gold_path(repo / "data")),
        "~/.cache/ner-autoresearch/holdout",
        "data/holdout.jsonl",
        ".git/config",
        "research_loop/agents/base.py",
        "runs/../../evaluate.py",
        "",
    ]
    fake = backend.start([calls(*[view(path) for path in forbidden]), *good_session()])
    backend.agent(fake, repo).propose(make_context(repo))

    results = backend.results_after(fake, 0)
    assert len(results) == len(forbidden) and all(is_error for is_error, _ in results), results
    everything_sent = backend.everything_sent(fake)
    assert GOLD_SECRET not in everything_sent and OUTSIDE_SECRET not in everything_sent
    assert "root:" not in everything_sent


# ----- the Messages and chat.completions APIs: errors and the SDKs' retries -----


def rate_limited(backend: Backend, headers: dict) -> dict:
    if backend.name == "anthropic":
        return fake_anthropic.error(429, "rate_limit_error", "too many requests per minute", headers)
    return fake_openai.error(429, "Rate limit reached for requests", "rate_limit_exceeded", headers)


def server_error(backend: Backend, status: int) -> dict:
    if backend.name == "anthropic":
        return fake_anthropic.error(status, "overloaded_error" if status == 529 else "api_error", "try later")
    return fake_openai.error(status, "The server had an error while processing your request")


def raw(backend: Backend, body: str, content_type: str = "application/json") -> dict:
    module = fake_anthropic if backend.name == "anthropic" else fake_openai
    return module.raw(body, content_type=content_type)


@pytest.mark.parametrize("headers", [{"retry-after-ms": "10"}, {"retry-after": "0.01"}])
def test_a_rate_limit_is_retried_by_the_sdk_as_the_server_asks(http_backend, repo, headers):
    fake = http_backend.start([rate_limited(http_backend, headers), *good_session()])
    proposal = http_backend.agent(fake, repo).propose(make_context(repo))
    assert proposal.direction == "learning rate"
    assert len(fake.requests) == 3 and proposal.usage.calls == 2


@pytest.mark.parametrize("status", [500, 529])
def test_server_errors_past_the_sdk_retries_are_a_retryable_agent_error(http_backend, repo, status):
    fake = http_backend.start([server_error(http_backend, status)] * 3 + good_session())
    with pytest.raises(AgentError, match=str(status)) as raised:
        http_backend.agent(fake, repo, max_retries=2).propose(make_context(repo))
    assert raised.value.retryable
    assert len(fake.requests) == 3, "one call and the SDK's two retries, nothing more"
    assert raised.value.usage.calls == 0


def test_an_outage_shorter_than_the_sdk_retries_is_ridden_out(http_backend, repo):
    fake = http_backend.start(
        [server_error(http_backend, 529), server_error(http_backend, 500), *good_session()]
    )
    assert (
        http_backend.agent(fake, repo, max_retries=2).propose(make_context(repo)).direction == "learning rate"
    )
    assert len(fake.requests) == 4


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ('{"id": "msg_1", "type": "mess', "application/json"),
        ('{"unexpected": 1}', "application/json"),
        ("<html>502 Bad Gateway</html>", "text/html"),
    ],
)
def test_a_malformed_body_with_http_200_is_a_retryable_agent_error(http_backend, repo, body, content_type):
    fake = http_backend.start([raw(http_backend, body, content_type), *good_session()])
    with pytest.raises(AgentError, match="cannot be read") as raised:
        http_backend.agent(fake, repo).propose(make_context(repo))
    assert raised.value.retryable
    assert len(fake.requests) == 1


def test_a_rejected_key_is_not_retried(http_backend, repo):
    reply = (
        fake_anthropic.BAD_KEY
        if http_backend.name == "anthropic"
        else fake_openai.error(401, "Incorrect API key provided", "invalid_api_key")
    )
    fake = http_backend.start([reply, *good_session()])
    with pytest.raises(AgentError, match="rejected the API key") as raised:
        http_backend.agent(fake, repo).propose(make_context(repo))
    assert not raised.value.retryable
    assert len(fake.requests) == 1
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("status", [400, 403, 404, 413])
def test_request_errors_are_not_retryable(http_backend, repo, status):
    reply = (
        fake_anthropic.error(status, "invalid_request_error", "the request is wrong")
        if http_backend.name == "anthropic"
        else fake_openai.error(status, "the request is wrong")
    )
    fake = http_backend.start([reply, *good_session()])
    with pytest.raises(AgentError, match="the request is wrong") as raised:
        http_backend.agent(fake, repo).propose(make_context(repo))
    assert not raised.value.retryable
    assert len(fake.requests) == 1


def test_a_spent_budget_is_not_retryable(http_backend, repo):
    if http_backend.name == "anthropic":
        reply = fake_anthropic.error(
            429, "rate_limit_error", "monthly spend limit reached", {"x-should-retry": "false"}
        )
        reply["body"]["error"]["details"] = {"error_code": "enforced_spend_limit_reached"}
    else:
        reply = fake_openai.error(
            429, "You exceeded your current quota", "insufficient_quota", {"x-should-retry": "false"}
        )
    fake = http_backend.start([reply, *good_session()])
    with pytest.raises(AgentError) as raised:
        http_backend.agent(fake, repo).propose(make_context(repo))
    assert not raised.value.retryable
    assert len(fake.requests) == 1


def test_an_unreachable_api_is_a_retryable_agent_error(http_backend, repo, monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fake = http_backend.start([])
    if http_backend.name == "anthropic":
        monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{port}")
        agent = http_backend.agent(fake, repo, max_retries=0)
    else:
        agent = OpenAIAgent(OPENAI_MODEL, repo, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    with pytest.raises(AgentError, match="cannot reach") as raised:
        agent.propose(make_context(repo))
    assert raised.value.retryable


# ----- the OpenAI-compatible agent and small local models -----


def openai_agent(fake: FakeOpenAI, repo: Path, model: str = OPENAI_MODEL, **options) -> OpenAIAgent:
    return OpenAIAgent(model, repo, base_url=fake.url, **options)


@pytest.fixture
def openai_fake(monkeypatch):
    """openai_fake(script) -> a running FakeOpenAI, with a dummy OPENAI_API_KEY set."""
    backend = OpenAIBackend(monkeypatch)
    yield backend.start
    backend.stop()


def test_openai_requests_carry_the_function_tools_and_the_prompt(openai_fake, repo):
    fake = openai_fake(good_session())
    openai_agent(fake, repo).propose(make_context(repo, feedback="duplicate of run 0002"))
    first = fake.requests[0]
    assert first["model"] == OPENAI_MODEL
    assert [tool["type"] for tool in first["tools"]] == ["function"] * 3
    assert [tool["function"]["name"] for tool in first["tools"]] == ["view_file", "edit_train", "submit"]
    assert first["tools"][1]["function"]["parameters"]["required"] == ["old", "new"]
    system, user = first["messages"]
    assert system["role"] == "system" and "Prefer small changes." in system["content"]
    assert TRAIN_PY in user["content"] and "duplicate of run 0002" in user["content"]
    assert "max_tokens" not in first and "max_completion_tokens" not in first  # the server's default


def test_an_unknown_model_has_an_unknown_cost_not_zero(openai_fake, repo):
    fake = openai_fake(good_session())
    agent = openai_agent(fake, repo, model="qwen3-coder:30b", max_cost_usd_per_proposal=0.0)
    proposal = agent.propose(make_context(repo))
    assert proposal.usage.cost_usd is None
    assert proposal.usage.tokens_in == 2000, "tokens are still counted"


def test_cached_prompt_tokens_are_priced_as_cached_and_dated_snapshots_as_their_model(openai_fake, repo):
    usage = {"prompt_tokens": 1000, "completion_tokens": 200, "prompt_tokens_details": {"cached_tokens": 600}}
    fake = openai_fake(
        [
            fake_openai.completion(
                fake_openai.tool_call("edit_train", {"old": LR_LINE, "new": NEW_LR_LINE}),
                fake_openai.tool_call("submit", {"hypothesis": "h", "direction": "d"}),
                usage=usage,
            )
        ]
    )
    proposal = openai_agent(fake, repo, model="gpt-5.4-mini-2026-03-17").propose(make_context(repo))
    assert (proposal.usage.input_tokens, proposal.usage.cache_read_tokens, proposal.usage.tokens_in) == (
        400,
        600,
        1000,
    )
    expected = (
        400 * GPT_5_4_MINI["input"] + 600 * GPT_5_4_MINI["cached_input"] + 200 * GPT_5_4_MINI["output"]
    ) / 1e6
    assert proposal.usage.cost_usd == pytest.approx(expected)


def test_a_server_without_usage_fields_gives_an_unknown_cost(openai_fake, repo):
    fake = openai_fake(
        [
            fake_openai.completion(
                fake_openai.tool_call("edit_train", {"old": LR_LINE, "new": NEW_LR_LINE}),
                fake_openai.tool_call("submit", {"hypothesis": "h", "direction": "d"}),
                usage=None,
            )
        ]
    )
    proposal = openai_agent(fake, repo).propose(make_context(repo))
    assert proposal.usage.cost_usd is None and proposal.usage.calls == 1


def test_a_reply_cut_off_by_the_token_limit_is_nudged_to_be_brief(openai_fake, repo):
    fake = openai_fake(
        [
            fake_openai.completion(content="Let me think about this at length...", finish_reason="length"),
            *good_session(),
        ]
    )
    assert openai_agent(fake, repo, max_tokens=100).propose(make_context(repo)).direction == "learning rate"
    assert fake.requests[1]["messages"][-1] == {"role": "user", "content": CUT_OFF_NUDGE}
    assert fake.requests[0]["max_tokens"] == 100, "a local server gets max_tokens"


def test_a_tool_call_cut_off_mid_json_gets_an_error_result(openai_fake, repo):
    fake = openai_fake(
        [
            fake_openai.completion(
                fake_openai.tool_call("edit_train", '{"old": "LEARNING_RATE'), finish_reason="length"
            ),
            *good_session(),
        ]
    )
    openai_agent(fake, repo).propose(make_context(repo))
    [tool_message] = [m for m in fake.requests[1]["messages"] if m["role"] == "tool"]
    assert "not valid JSON" in tool_message["content"]
    assistant = fake.requests[1]["messages"][-2]
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {}, "history stays valid JSON"


def test_several_tool_calls_in_one_reply_all_run_and_missing_ids_are_made_up(openai_fake, repo):
    fake = openai_fake(
        [
            fake_openai.completion(
                fake_openai.tool_call("view_file", {"path": "results.tsv"}, call_id=""),
                fake_openai.tool_call("edit_train", {"old": LR_LINE, "new": NEW_LR_LINE}, call_id=""),
                fake_openai.tool_call("submit", {"hypothesis": "h", "direction": "d"}, call_id=""),
            )
        ]
    )
    proposal = openai_agent(fake, repo).propose(make_context(repo))
    assert proposal.train_py == TRAIN_PY.replace(LR_LINE, NEW_LR_LINE)
    assert len(fake.requests) == 1


def test_made_up_ids_pair_the_tool_results_with_their_calls(openai_fake, repo):
    fake = openai_fake(
        [
            fake_openai.completion(
                fake_openai.tool_call("view_file", {"path": "train.py"}, call_id=""),
                fake_openai.tool_call("view_file", {"path": "nope"}, call_id=""),
            ),
            *good_session(),
        ]
    )
    openai_agent(fake, repo).propose(make_context(repo))
    messages = fake.requests[1]["messages"]
    ids = [call["id"] for call in messages[-3]["tool_calls"]]
    assert len(set(ids)) == 2 and all(ids)
    assert [m["tool_call_id"] for m in messages[-2:]] == ids


def test_without_a_key_a_local_server_gets_a_placeholder(openai_fake, repo, monkeypatch):
    fake = openai_fake(good_session())
    monkeypatch.delenv("OPENAI_API_KEY")
    openai_agent(fake, repo).propose(make_context(repo))
    assert fake.headers[0]["authorization"] == f"Bearer {LOCAL_SERVER_KEY}"


def test_without_a_key_or_a_base_url_the_error_names_both(repo, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(AgentError, match="OPENAI_API_KEY.*--base-url") as raised:
        OpenAIAgent(OPENAI_MODEL, repo)
    assert not raised.value.retryable


# ----- the Anthropic agent: prompt, caching, configuration -----


def anthropic_agent(repo: Path, **options) -> AnthropicAgent:
    return AnthropicAgent(model=ANTHROPIC_MODEL, repo=repo, **options)


@pytest.fixture
def anthropic_fake(monkeypatch):
    """anthropic_fake(script) -> a running FakeAnthropic that the SDK talks to."""
    backend = AnthropicBackend(monkeypatch)
    yield backend.start
    backend.stop()


def anthropic_results(fake: FakeAnthropic, turn: int) -> list[tuple[bool, str]]:
    return AnthropicBackend.results_after(fake, turn)


def test_the_first_request_carries_the_instructions_the_material_and_the_tools(anthropic_fake, repo):
    fake = anthropic_fake(good_session())
    context = make_context(
        repo,
        feedback="duplicate of run 0002",
        last_log_tail=LOG_TEXT,
        task_card="Reddit posts; two entity types",
        in_flight=["run 7: LR 3e-5 (training)"],
    )
    anthropic_agent(repo).propose(context)

    first = fake.requests[0]
    assert first["model"] == ANTHROPIC_MODEL
    assert [tool["name"] for tool in first["tools"]] == ["view_file", "edit_train", "submit"]
    system_text = "\n".join(block["text"] for block in first["system"])
    assert "Prefer small changes." in system_text and "BIO" in system_text
    instructions = system_text.split("# program.md")[0].strip()
    assert "only through the loop's feedback" in instructions.splitlines()[-1]
    [user] = first["messages"]
    user_text = "\n".join(block["text"] for block in user["content"])
    for expected in (
        TRAIN_PY,
        "Best strict F1 0.412",
        "0002\t0.4120\tkeep",
        "duplicate of run 0002",
        "CUDA out",
        "Reddit posts; two entity types",
        "run 7: LR 3e-5 (training)",
        "Do not propose any of these",
    ):
        assert expected in user_text


def test_empty_task_card_and_nothing_in_flight_leave_their_sections_out(anthropic_fake, repo):
    fake = anthropic_fake(good_session())
    anthropic_agent(repo).propose(make_context(repo))
    user_text = json.dumps(fake.requests[0]["messages"][0])
    assert "task card" not in user_text and "In flight" not in user_text


def test_prompt_caching_marks_tools_system_and_conversation(anthropic_fake, repo):
    fake = anthropic_fake([calls(view("train.py")), *good_session()])
    anthropic_agent(repo).propose(make_context(repo))

    first, _, third = fake.requests
    assert first["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert first["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert first["messages"][0]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert third["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert all(json.dumps(request).count('"cache_control"') <= 4 for request in fake.requests)
    assert first["system"] == third["system"] and first["tools"] == third["tools"]  # the cached prefix holds


def test_an_edit_matching_twice_is_refused_then_corrected(anthropic_fake, repo):
    fake = anthropic_fake(
        [
            calls(edit("= 0.1  #", "= 0.05  #")),  # WARMUP_RATIO and LABEL_SMOOTHING
            calls(edit("LABEL_SMOOTHING = 0.1  #", "LABEL_SMOOTHING = 0.05  #")),
            calls(submit("Less label smoothing sharpens boundaries.", "loss")),
        ]
    )
    proposal = anthropic_agent(repo).propose(make_context(repo))
    [refused] = anthropic_results(fake, 0)
    assert refused[0] is True and "matches 2 times" in refused[1]
    assert "LABEL_SMOOTHING = 0.05  #" in proposal.train_py and "WARMUP_RATIO = 0.1  #" in proposal.train_py


def test_view_file_reads_allowed_files_and_the_last_log(anthropic_fake, repo):
    paths = ["results.tsv", "./evaluate.py", "run.log", "runs/0003/run.log", "train.py"]
    fake = anthropic_fake([calls(edit()), calls(*[view(path) for path in paths]), calls(submit())])
    anthropic_agent(repo).propose(make_context(repo))

    results = anthropic_results(fake, 1)
    assert [is_error for is_error, _ in results] == [False] * len(paths)
    contents = [content for _, content in results]
    assert contents[0] == (repo / "results.tsv").read_text()
    assert contents[1] == (repo / "evaluate.py").read_text()
    assert contents[2] == contents[3] == LOG_TEXT
    assert NEW_LR_LINE in contents[4], "train.py is the working copy, edits included"


def test_view_file_refuses_an_allowed_name_that_symlinks_out(anthropic_fake, repo):
    (repo / "results.tsv").unlink()
    (repo / "results.tsv").symlink_to(holdout_gold_path(repo / "data"))
    fake = anthropic_fake([calls(view("results.tsv")), *good_session()])
    anthropic_agent(repo).propose(make_context(repo))
    [(is_error, content)] = anthropic_results(fake, 0)
    assert is_error and "refused" in content
    assert GOLD_SECRET not in fake.all_requests_text()


def test_a_missing_log_and_missing_results_are_errors_not_crashes(anthropic_fake, repo):
    (repo / "results.tsv").unlink()
    fake = anthropic_fake([calls(view("results.tsv"), view("run.log")), *good_session()])
    anthropic_agent(repo).propose(make_context(repo, last_log_path=None))
    results = anthropic_results(fake, 0)
    assert [is_error for is_error, _ in results] == [True, True]
    assert "does not exist yet" in results[0][1]


def test_a_submit_of_a_file_that_does_not_compile_is_sent_back(anthropic_fake, repo):
    fake = anthropic_fake(
        [
            calls(edit(LR_LINE, "LEARNING_RATE = = 3e-5")),
            calls(submit()),
            calls(edit("LEARNING_RATE = = 3e-5", NEW_LR_LINE)),
            calls(submit()),
        ]
    )
    proposal = anthropic_agent(repo).propose(make_context(repo))
    [(is_error, content)] = anthropic_results(fake, 1)
    assert is_error and "does not compile: line 7" in content
    assert NEW_LR_LINE in proposal.train_py


def test_edit_and_submit_in_one_reply_is_one_call(anthropic_fake, repo):
    fake = anthropic_fake([calls(edit(), submit())])
    proposal = anthropic_agent(repo).propose(make_context(repo))
    assert proposal.train_py == TRAIN_PY.replace(LR_LINE, NEW_LR_LINE)
    assert proposal.usage.calls == 1 and len(fake.requests) == 1


def test_a_refusal_is_an_agent_error(anthropic_fake, repo):
    anthropic_fake(
        [fake_anthropic.message(fake_anthropic.text("I can't help with that."), stop_reason="refusal")]
    )
    with pytest.raises(AgentError, match="refused"):
        anthropic_agent(repo).propose(make_context(repo))


def test_check_api_key_names_the_builtin_agent(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(AgentError, match="ANTHROPIC_API_KEY is not set.*--agent builtin"):
        check_api_key()
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-dummy")
    check_api_key()


def test_propose_without_a_key_is_an_agent_error_not_a_crash(repo, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-dummy")
    agent = anthropic_agent(repo)
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(AgentError, match="--agent builtin"):
        agent.propose(make_context(repo))


def test_the_model_allowlist(repo, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-dummy")
    assert ANTHROPIC_MODEL in MODEL_PRICES
    assert all(
        price.cache_read < price.input < price.cache_write < price.output for price in MODEL_PRICES.values()
    )
    with pytest.raises(AgentError, match="unknown model 'gpt-4'"):
        AnthropicAgent(model="gpt-4", repo=repo)


# ----- the Claude Code agent -----


@pytest.fixture
def claude_code(monkeypatch):
    return ClaudeCodeBackend(monkeypatch)


def test_claude_code_sees_only_our_three_tools_in_an_empty_scratch_folder(claude_code, repo):
    fake = claude_code.start(good_session())
    ClaudeCodeAgent(model="claude-sonnet-5-5", repo=repo, transport_factory=fake.connect_with).propose(
        make_context(repo)
    )

    options = fake.options
    assert options.tools == [], "every built-in tool is switched off"
    assert (
        options.allowed_tools
        == TOOL_NAMES
        == ["mcp__ner__view_file", "mcp__ner__edit_train", "mcp__ner__submit"]
    )
    assert {
        "Bash",
        "Read",
        "Write",
        "Edit",
        "MultiEdit",
        "Glob",
        "Grep",
        "WebFetch",
        "WebSearch",
        "Task",
        "NotebookEdit",
        "TodoWrite",
    } <= set(options.disallowed_tools)
    assert fake.offered_tools == ["view_file", "edit_train", "submit"]
    assert list(options.mcp_servers) == ["ner"] and options.strict_mcp_config
    assert options.permission_mode == "dontAsk" and options.can_use_tool is not None
    assert (
        options.setting_sources == [] and options.skills == [] and not options.plugins and not options.hooks
    )
    assert options.verbatim_prompts, "an @path in train.py or a log must not be expanded into a file"
    assert options.model == "claude-sonnet-5-5"
    assert fake.cwd_at_connect == [], "the working directory is an empty scratch folder"
    assert not Path(options.cwd).exists(), "and it is removed after the proposal"
    assert Path(options.cwd).resolve() != repo.resolve()
    assert fake.closed


def test_claude_code_gets_those_options_as_cli_flags(claude_code, repo):
    """What the real CLI would be started with (the one part of the path the fake transport skips)."""
    from claude_agent_sdk._internal.transport.subprocess_cli import SubprocessCLITransport

    fake = claude_code.start(good_session())
    ClaudeCodeAgent(repo=repo, transport_factory=fake.connect_with).propose(make_context(repo))
    options = dataclasses.replace(
        fake.options, cli_path="/usr/bin/false", permission_prompt_tool_name="stdio", can_use_tool=None
    )
    command = SubprocessCLITransport(prompt="", options=options)._build_command()

    def flag(name):
        return command[command.index(name) + 1]

    assert flag("--tools") == ""
    assert flag("--allowedTools") == ",".join(TOOL_NAMES)
    assert set(flag("--disallowedTools").split(",")) == set(BUILTIN_TOOLS)
    assert flag("--permission-mode") == "dontAsk"
    assert "--setting-sources=" in command and "--strict-mcp-config" in command
    assert flag("--max-turns") == "12" and float(flag("--max-budget-usd")) == 2.0
    assert json.loads(flag("--mcp-config")) == {"mcpServers": {"ner": {"type": "sdk", "name": "ner"}}}


def test_claude_code_denies_built_in_tools_if_the_cli_asks(claude_code, repo):
    fake = claude_code.start(
        [
            fake_claude_code.turn(
                fake_claude_code.tool_use("Bash", {"command": "cat /etc/passwd"}),
                fake_claude_code.tool_use("Read", {"file_path": str(repo / "data" / "holdout.jsonl")}),
            ),
            *good_session(),
        ]
    )
    ClaudeCodeAgent(repo=repo, transport_factory=fake.connect_with).propose(make_context(repo))
    assert [answer["behavior"] for answer in fake.permission_answers] == ["deny", "deny"]
    assert all(is_error for is_error, _ in claude_code.results_after(fake, 0))


def test_claude_code_stops_the_turn_after_a_second_unchanged_submit(claude_code, repo):
    fake = claude_code.start([calls(submit()), calls(submit()), *good_session()])
    with pytest.raises(AgentError, match="unchanged twice"):
        ClaudeCodeAgent(repo=repo, transport_factory=fake.connect_with).propose(make_context(repo))
    assert fake.interrupts == 1
    later = [result for turn in fake.tool_results[2:] for result in turn]
    assert all(result["is_error"] and "has ended" in result["content"] for result in later), later


def test_claude_code_scratch_folder_is_removed_after_a_failure_too(claude_code, repo):
    fake = claude_code.start([says("no"), says("still no")])
    with pytest.raises(AgentError):
        ClaudeCodeAgent(repo=repo, transport_factory=fake.connect_with).propose(make_context(repo))
    assert fake.cwd_at_connect == [] and not Path(fake.options.cwd).exists()


@pytest.mark.parametrize(
    ("failure", "retryable", "words"),
    [
        (fake_claude_code.api_error(529, "Overloaded"), True, "529"),
        (fake_claude_code.api_error(429, "Rate limited"), True, "429"),
        (fake_claude_code.api_error(500, "Internal server error"), True, "500"),
        (
            fake_claude_code.api_error(401, "Invalid API key · Please run /login", "authentication_failed"),
            False,
            "login",
        ),
        (
            fake_claude_code.api_error(400, "prompt is too long", "invalid_request"),
            False,
            "prompt is too long",
        ),
    ],
)
def test_claude_code_api_errors_are_agent_errors(claude_code, repo, failure, retryable, words):
    fake = claude_code.start([failure])
    with pytest.raises(AgentError, match=words) as raised:
        ClaudeCodeAgent(repo=repo, transport_factory=fake.connect_with).propose(make_context(repo))
    assert raised.value.retryable is retryable
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        ("process", True),
        ("json", True),
        ("not-found", False),
        ("bug", True),
    ],
)
def test_claude_code_transport_failures_are_agent_errors(claude_code, repo, error, retryable):
    import claude_agent_sdk

    exception = {
        "process": claude_agent_sdk.ProcessError("Command failed", exit_code=1, stderr="segfault"),
        "json": claude_agent_sdk.CLIJSONDecodeError("{not json", ValueError("bad")),
        "not-found": claude_agent_sdk.CLINotFoundError("Claude Code not found", "/nowhere/claude"),
        "bug": KeyError("surprise"),
    }[error]
    fake = claude_code.start([calls(view("train.py")), TransportFailure(exception)])
    agent = ClaudeCodeAgent(repo=repo, transport_factory=fake.connect_with)
    with pytest.raises(AgentError) as raised:
        agent.propose(make_context(repo))
    assert raised.value.retryable is retryable
    assert raised.value.usage.calls == 1 and raised.value.usage.cost_usd is None, (
        "a call was made; its cost unknown"
    )
    assert not Path(fake.options.cwd).exists()


def test_claude_code_that_hangs_times_out(claude_code, repo):
    class Hanging(FakeClaudeCode):
        async def _play_query(self):
            await fake_claude_code.anyio.sleep(60)
            yield {}

    fake = Hanging([])
    with pytest.raises(AgentError, match="within 0 s") as raised:
        ClaudeCodeAgent(repo=repo, transport_factory=fake.connect_with, timeout_s=0.3).propose(
            make_context(repo)
        )
    assert raised.value.retryable
    assert raised.value.usage.cost_usd == 0.0


@pytest.mark.slow
def test_the_real_claude_code_cli_runs_a_session_through_the_fake_api(repo, tmp_path, monkeypatch):
    """The bundled CLI itself, started with our options as flags, talking to the fake Messages API: only our
    three tools reach the model, a built-in tool is refused, and the proposal comes back with its cost."""
    script = [
        fake_anthropic.message(fake_anthropic.tool_use("mcp__ner__view_file", {"path": "train.py"})),
        fake_anthropic.message(fake_anthropic.tool_use("Bash", {"command": "cat /etc/passwd"})),
        fake_anthropic.message(
            fake_anthropic.tool_use("mcp__ner__edit_train", {"old": LR_LINE, "new": NEW_LR_LINE})
        ),
        fake_anthropic.message(
            fake_anthropic.tool_use(
                "mcp__ner__submit", {"hypothesis": HYPOTHESIS, "direction": "learning rate"}
            )
        ),
        fake_anthropic.message(fake_anthropic.text("Submitted.")),
    ]
    fake = FakeAnthropic(
        script, toolless_reply=fake_anthropic.message(fake_anthropic.text("A title"))
    ).start()
    try:
        fake.install(monkeypatch)
        monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "claude-config"))  # not the user's ~/.claude
        proposal = ClaudeCodeAgent(model=ANTHROPIC_MODEL, repo=repo, timeout_s=120).propose(
            make_context(repo)
        )
    finally:
        fake.stop()

    assert proposal.train_py == TRAIN_PY.replace(LR_LINE, NEW_LR_LINE)
    assert proposal.usage.calls == 5 and proposal.usage.cost_usd > 0
    conversation = [request for request in fake.requests if request.get("tools")]
    offered = {tool["name"] for tool in conversation[0]["tools"] if not tool.get("defer_loading")}
    assert offered == set(TOOL_NAMES)
    blocks = [
        block
        for item in conversation[-1]["messages"]
        if isinstance(item["content"], list)
        for block in item["content"]
    ]
    bash_id = next(
        block["id"] for block in blocks if block.get("type") == "tool_use" and block["name"] == "Bash"
    )
    [bash] = [
        block for block in blocks if block.get("type") == "tool_result" and block["tool_use_id"] == bash_id
    ]
    assert bash.get("is_error") and "No such tool available: Bash" in json.dumps(bash["content"])
    assert not list((tmp_path / "claude-config").glob("projects/*")), "no transcript left behind"


def test_claude_code_without_the_sdk_says_how_to_install_it(repo, monkeypatch):
    monkeypatch.setitem(sys.modules, "claude_agent_sdk", None)
    with pytest.raises(AgentError, match=r'pip install -e "\.\[claude-code\]"') as raised:
        ClaudeCodeAgent(repo=repo)
    assert not raised.value.retryable


# ----- one-shot questions -----


def test_oneshot_asks_anthropic(anthropic_fake, monkeypatch):
    fake = anthropic_fake([fake_anthropic.message(fake_anthropic.text("Keep run 0004."))])
    text, usage = oneshot.ask("anthropic", ANTHROPIC_MODEL, "You judge runs.", "Which run?")
    assert text == "Keep run 0004."
    assert usage.calls == 1 and usage.cost_usd == pytest.approx(AnthropicBackend.one_call_cost)
    request = fake.requests[0]
    assert request["system"] == "You judge runs." and request["messages"] == [
        {"role": "user", "content": "Which run?"}
    ]
    assert "tools" not in request


def test_oneshot_asks_an_openai_compatible_server(openai_fake):
    fake = openai_fake([fake_openai.completion(content="Run 0004.")])
    text, usage = oneshot.ask("openai", "llama3.3", "You judge runs.", "Which run?", base_url=fake.url)
    assert text == "Run 0004." and usage.cost_usd is None
    assert fake.requests[0]["messages"][0] == {"role": "system", "content": "You judge runs."}


def test_oneshot_maps_errors_like_the_agents(openai_fake, anthropic_fake):
    fake = openai_fake([fake_openai.error(401, "Incorrect API key provided")])
    with pytest.raises(AgentError, match="rejected the API key") as raised:
        oneshot.ask("openai", OPENAI_MODEL, "s", "u", base_url=fake.url)
    assert not raised.value.retryable
    anthropic_fake([fake_anthropic.raw('{"broken')])
    with pytest.raises(AgentError, match="cannot be read") as raised:
        oneshot.ask("anthropic", ANTHROPIC_MODEL, "s", "u")
    assert raised.value.retryable
    with pytest.raises(AgentError, match="unknown backend 'gemini'"):
        oneshot.ask("gemini", "g", "s", "u")


# ----- the tool functions without a transport -----


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
