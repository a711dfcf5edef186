"""The LLM agent: one Messages API conversation with tool use per proposal, through the anthropic SDK.

Each propose() is a fresh conversation: fixed instructions + program.md in the (cached) system prompt,
this iteration's state, results and train.py in the first user message; the model reads files and edits
an in-memory train.py through the tools in agent_tools.py and ends with submit. Every call's tokens and
dollars are logged and summed; API outages are retried with backoff, key and request errors are not.

Policies (SPEC.md, "The agent contract"):
- The model stops without calling submit: it is asked once more; a second time is an AgentError.
- submit with train.py unchanged (or not compiling): an error tool_result the model can react to;
  a second unchanged submit is an AgentError. The loop never sees an unchanged proposal.
- At most `max_turns` API calls per proposal; the last one is announced to the model; then AgentError.
- A proposal whose cost passes `max_cost_usd_per_proposal` stops with AgentError.
Every AgentError raised by propose() carries `.usage` (what the failed proposal cost), and
`agent.total_usage` sums all proposals, failed ones included, for the loop's total cost cap.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import time
from pathlib import Path
from typing import NamedTuple

import anthropic

from research_loop.agent_tools import TOOL_SPECS, ToolSession
from research_loop.agents import AgentError, Context, Proposal, Usage

log = logging.getLogger(__name__)


class ModelPrice(NamedTuple):
    """US dollars per million tokens."""

    input: float
    output: float
    cache_write: float  # 5-minute cache writes (cache_creation_input_tokens; the default TTL used here)
    cache_read: float  # cache hits and refreshes (cache_read_input_tokens)


# The --llm allowlist and its prices, from https://platform.claude.com/docs/en/about-claude/pricing
# ("Model pricing": base input, 5m cache writes, cache hits, output) and the model pages
# (platform.claude.com/docs/en/models/<model>/overview), as of the Claude 5.5 generation.
# Left out on purpose: claude-haiku-5-5 (priced in two bands by prompt length, which one flat row
# cannot express), the limited-availability Mythos models, and retired or pre-4.5 models.
MODEL_PRICES: dict[str, ModelPrice] = {
    "claude-fable-5-1": ModelPrice(10.00, 50.00, 12.50, 0.25),
    "claude-opus-5-5": ModelPrice(4.00, 20.00, 5.00, 0.20),
    "claude-sonnet-5-5": ModelPrice(2.00, 10.00, 2.50, 0.20),
    "claude-opus-5": ModelPrice(5.00, 25.00, 6.25, 0.50),
    "claude-sonnet-5": ModelPrice(2.00, 10.00, 2.50, 0.20),
    "claude-opus-4-8": ModelPrice(5.00, 25.00, 6.25, 0.50),
    "claude-opus-4-7": ModelPrice(5.00, 25.00, 6.25, 0.50),
    "claude-opus-4-6": ModelPrice(5.00, 25.00, 6.25, 0.50),
    "claude-sonnet-4-6": ModelPrice(3.00, 15.00, 3.75, 0.30),
    "claude-haiku-4-5": ModelPrice(1.00, 5.00, 1.25, 0.10),
}
# Sonnet 5.5: "the best combination of speed and intelligence" (models overview), at $2 / $10.
DEFAULT_MODEL = "claude-sonnet-5-5"

# Worth retrying: the API's docs (platform.claude.com/docs/en/api/errors) name 429 rate_limit_error
# and 529 overloaded_error as transient, and 5xx as server-side; 408/409 are retried by the SDK too.
RETRYABLE_STATUS = {408, 409, 429}
SPEND_LIMIT_CODE = "enforced_spend_limit_reached"  # a 429 that lasts until next month: not retried

CACHE = {"type": "ephemeral"}  # 5-minute prompt cache breakpoint

INSTRUCTIONS = """\
You are the research agent of an unattended overnight loop that improves a named-entity recognition \
model. Each iteration you propose ONE change to train.py, the only file you may change. The loop then \
checks that train.py compiles, trains it, scores its predictions with the fixed scorer (strict span F1 \
on the validation set is the number to beat), appends a row to results.tsv, and keeps or reverts the \
change.

Tools:
- view_file {"path"}: read train.py (your working copy), program.md, CURRENT_STATE.md, results.tsv, \
prepare.py, evaluate.py, or run.log (the last run's log). Nothing else is readable.
- edit_train {"old", "new"}: replace exactly one occurrence of `old` in train.py.
- submit {"hypothesis", "direction"}: end the proposal. `direction` is a short label for the kind of \
change ("learning rate", "loss", "post-processing", ...).

Rules:
- One idea per proposal, small enough that its effect can be read from one result. Do not repeat \
experiments results.tsv or CURRENT_STATE.md already show, unless you say why the retry differs.
- Keep the config block at the top of train.py in its format: one UPPER_CASE constant per line, \
`NAME = <python literal>  # comment`.
- train.py must still run end to end, write its prediction files and print the final `---` block; \
do not change how it is scored, and do not look for the holdout labels.
- Work in few turns: edit, then call submit. Text outside tool calls is not read by anyone.

The human's standing instructions (program.md) follow; they take precedence over your own ideas."""

NUDGE = (
    "You stopped without calling submit. Make your change with edit_train and call submit now; "
    "the proposal fails if you stop again."
)
LAST_TURN = "This is your last turn: call submit now (an edit_train before it in the same turn is fine)."


def check_api_key() -> None:
    """Fail fast, before the night starts, when no API key is configured."""
    if not os.environ.get("ANTHROPIC_API_KEY"):
        raise AgentError(
            "ANTHROPIC_API_KEY is not set: export your Anthropic API key, or run with --agent builtin"
        )


def call_usage(model: str, usage: object) -> Usage:
    """One call's tokens from the API's usage fields, priced with MODEL_PRICES."""
    price = MODEL_PRICES[model]
    tokens = Usage(
        input_tokens=getattr(usage, "input_tokens", 0) or 0,
        output_tokens=getattr(usage, "output_tokens", 0) or 0,
        cache_write_tokens=getattr(usage, "cache_creation_input_tokens", 0) or 0,
        cache_read_tokens=getattr(usage, "cache_read_input_tokens", 0) or 0,
        calls=1,
    )
    tokens.cost_usd = (
        tokens.input_tokens * price.input
        + tokens.output_tokens * price.output
        + tokens.cache_write_tokens * price.cache_write
        + tokens.cache_read_tokens * price.cache_read
    ) / 1_000_000
    return tokens


def system_blocks(program_md: str) -> list[dict]:
    """The stable part of the prompt; the breakpoint on the last block caches tools + system together."""
    return [
        {"type": "text", "text": INSTRUCTIONS},
        {"type": "text", "text": "# program.md\n\n" + program_md, "cache_control": dict(CACHE)},
    ]


def tool_definitions() -> list[dict]:
    tools = copy.deepcopy(TOOL_SPECS)
    tools[-1]["cache_control"] = dict(CACHE)
    return tools


def first_user_blocks(context: Context, max_log_chars: int = 8_000) -> list[dict]:
    """This iteration's material: state, recent results, why the last proposal bounced or crashed, train.py."""
    sections = [
        "# CURRENT_STATE.md\n\n" + (context.current_state_md.strip() or "(empty)"),
        "# Recent rows of results.tsv\n\n" + (context.recent_results.strip() or "(no runs yet)"),
    ]
    if context.feedback:
        sections.append("# Your previous proposal was sent back\n\n" + context.feedback.strip())
    if context.last_log_tail:
        tail = context.last_log_tail[-max_log_chars:]
        sections.append(
            "# The last run crashed; the end of its log\n\n```\n" + tail + "\n```\n"
            "Fix the cause, or abandon that idea and propose something else."
        )
    sections.append("# Current train.py\n\n```python\n" + context.train_py + "\n```")
    sections.append("Propose one change now: edit train.py with edit_train, then call submit.")
    blocks = [{"type": "text", "text": text} for text in sections]
    blocks[-1]["cache_control"] = dict(CACHE)  # later turns of this proposal re-read all of it
    return blocks


def with_moving_breakpoint(messages: list[dict]) -> list[dict]:
    """The request's messages with a cache breakpoint on the newest user message (4 breakpoints at most)."""
    if len(messages) < 2:
        return messages
    last = copy.deepcopy(messages[-1])
    last["content"][-1]["cache_control"] = dict(CACHE)
    return messages[:-1] + [last]


def describe_api_error(err: anthropic.APIStatusError) -> str:
    kind = err.type or "error"
    message = err.api_message or err.message
    if err.status_code == 401:
        return (
            f"the Anthropic API rejected the API key (401 {kind}: {message}); "
            "check ANTHROPIC_API_KEY, or run with --agent builtin"
        )
    return f"the Anthropic API refused the request ({err.status_code} {kind}: {message})"


def is_retryable(err: anthropic.AnthropicError) -> bool:
    if isinstance(err, anthropic.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(err, anthropic.APIStatusError):
        if err.error_code == SPEND_LIMIT_CODE:
            return False
        return err.status_code in RETRYABLE_STATUS or err.status_code >= 500
    return False


def retry_after_s(err: anthropic.AnthropicError) -> float:
    """The server's Retry-After in seconds, 0 when absent or unreadable."""
    response = getattr(err, "response", None)
    try:
        return float(response.headers.get("retry-after", 0)) if response is not None else 0.0
    except ValueError:
        return 0.0


class AnthropicAgent:
    """Proposes train.py changes with a Claude model through the Messages API and the three tools."""

    name = "anthropic"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        repo: Path = Path("."),
        *,
        max_turns: int = 12,
        max_tokens: int = 16_000,
        max_cost_usd_per_proposal: float = 2.0,
        sdk_max_retries: int = 2,
        request_timeout_s: float = 600.0,
        backoff_base_s: float = 5.0,
        backoff_cap_s: float = 300.0,
        give_up_after_s: float = 1800.0,
    ):
        if model not in MODEL_PRICES:
            raise AgentError(f"unknown model {model!r}; allowed: {', '.join(MODEL_PRICES)}")
        self.model = model
        self.repo = Path(repo)
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.max_cost_usd_per_proposal = max_cost_usd_per_proposal
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.give_up_after_s = give_up_after_s
        self.total_usage = Usage()
        # Reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL from the environment; its own retries
        # (0.5 s .. 8 s) absorb short blips, the outer loop in _create() rides out long outages.
        self.client = anthropic.Anthropic(max_retries=sdk_max_retries, timeout=request_timeout_s)

    def propose(self, context: Context) -> Proposal:
        """One fresh conversation that ends in a submitted train.py, or an AgentError carrying `.usage`."""
        check_api_key()  # the SDK would raise a bare TypeError without one
        usage = Usage()
        try:
            return self._converse(context, usage)
        except AgentError as err:
            err.usage = usage
            raise
        finally:
            self.total_usage.add(usage)

    def _converse(self, context: Context, usage: Usage) -> Proposal:
        session = ToolSession(context.repo, context.train_py, context.last_log_path)
        system = system_blocks(context.program_md)
        messages: list[dict] = [{"role": "user", "content": first_user_blocks(context)}]
        nudged = False
        for turn in range(1, self.max_turns + 1):
            response = self._create(system, messages)
            self._account(response, usage, turn)
            if response.stop_reason == "refusal":
                raise AgentError("the model refused to propose a change (stop_reason refusal)")
            content = [block.to_dict() for block in response.content]  # verbatim, thinking blocks included
            if content:
                messages.append({"role": "assistant", "content": content})
            tool_uses = [block for block in response.content if block.type == "tool_use"]
            if not tool_uses:
                if nudged:
                    raise AgentError("the model stopped twice without calling submit")
                nudged = True
                messages.append({"role": "user", "content": [{"type": "text", "text": NUDGE}]})
                continue
            results = [self._run_tool(session, block) for block in tool_uses]
            if session.submission is not None:
                return Proposal(
                    train_py=session.train_py,
                    hypothesis=session.submission.hypothesis,
                    direction=session.submission.direction,
                    usage=usage,
                )
            if session.unchanged_submits >= 2:
                raise AgentError("the model submitted train.py unchanged twice")
            if turn == self.max_turns - 1:
                results.append({"type": "text", "text": LAST_TURN})
            messages.append({"role": "user", "content": results})
        raise AgentError(f"no submit after {self.max_turns} turns")

    def _run_tool(self, session: ToolSession, block) -> dict:
        result = session.call(block.name, block.input)
        log.debug("tool %s -> %s", block.name, "error: " + result.content[:200] if result.is_error else "ok")
        return {
            "type": "tool_result",
            "tool_use_id": block.id,
            "content": result.content,
            "is_error": result.is_error,
        }

    def _account(self, response, usage: Usage, turn: int) -> None:
        """Add one call's usage, log it, and stop the proposal past its cost cap."""
        this_call = call_usage(self.model, response.usage)
        usage.add(this_call)
        log.info(
            "anthropic %s turn %d: in %d, out %d, cache write %d, cache read %d tokens; $%.4f (proposal $%.4f)",
            self.model, turn, this_call.input_tokens, this_call.output_tokens, this_call.cache_write_tokens,
            this_call.cache_read_tokens, this_call.cost_usd, usage.cost_usd,
        )
        if usage.cost_usd > self.max_cost_usd_per_proposal:
            raise AgentError(
                f"proposal cost ${usage.cost_usd:.2f} passed the cap of "
                f"${self.max_cost_usd_per_proposal:.2f} after {usage.calls} calls"
            )

    def _create(self, system: list[dict], messages: list[dict]):
        """messages.create, retried with exponential backoff through overloads, rate limits and outages."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                return self.client.messages.create(
                    model=self.model,
                    max_tokens=self.max_tokens,
                    system=system,
                    tools=tool_definitions(),
                    messages=with_moving_breakpoint(messages),
                )
            except anthropic.APIStatusError as err:
                if not is_retryable(err):
                    raise AgentError(describe_api_error(err)) from err
                last_error = f"{err.status_code} {err.type or 'error'}: {err.api_message or err.message}"
                wait_hint = retry_after_s(err)
            except anthropic.APIConnectionError as err:
                last_error, wait_hint = f"{type(err).__name__}: {err.message}", 0.0
            except anthropic.AnthropicError as err:
                raise AgentError(f"the Anthropic client failed: {err}") from err
            attempt += 1
            backoff = self.backoff_base_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
            delay = min(self.backoff_cap_s, max(backoff, wait_hint))
            elapsed = time.monotonic() - started
            if elapsed + delay > self.give_up_after_s:
                raise AgentError(
                    f"the Anthropic API was unavailable for {elapsed:.0f} s ({attempt} attempts); "
                    f"last error {last_error}"
                )
            log.warning("anthropic call failed (%s); retry %d in %.1f s", last_error, attempt, delay)
            time.sleep(delay)
