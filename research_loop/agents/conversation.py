"""The turn policy of one proposal, shared by the chat backends (Anthropic Messages, OpenAI chat.completions).

A backend supplies only the transport (ChatTransport): send the conversation so far and read the tool calls
of the reply, then append what goes back to the model. converse() decides what happens next:
- tool calls run in the shared ToolSession; a call whose arguments could not be read goes back as an error;
- a reply without a tool call is nudged once; a second one is an AgentError;
- submit with train.py unchanged twice is an AgentError;
- at most `max_turns` calls, the last one announced to the model; then an AgentError;
- past `max_cost_usd` (checked only when the cost is known) the proposal stops with an AgentError.
Usage is summed over the calls, and every AgentError that leaves converse() carries it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from . import prompt
from .base import AgentError, Proposal, Usage
from .tools import ToolResult, ToolSession

log = logging.getLogger(__name__)


@dataclass
class ToolCall:
    """One tool call as the model sent it; `problem` is set when its arguments could not be read."""

    id: str
    name: str
    arguments: object = None
    problem: str | None = None  # e.g. invalid JSON: goes back to the model as an error result, never run


@dataclass
class Reply:
    """What the transport read from one API call."""

    tool_calls: list[ToolCall]
    usage: Usage
    cut_off: bool = False  # the reply hit the output-token limit
    refused: bool = False  # the model declined (Anthropic's stop_reason "refusal")


class ChatTransport(Protocol):
    """One proposal's conversation with one API; it keeps the messages."""

    label: str  # names the API and model in log lines and errors, e.g. "anthropic claude-sonnet-5-5"

    def send(self) -> Reply:
        """One API call on the conversation so far; the reply is appended to it. API errors: AgentError."""
        ...

    def add_tool_results(self, calls: list[ToolCall], results: list[ToolResult], note: str | None) -> None:
        """Answer every call of the last reply, in order, with a note for the model after them (or None)."""
        ...

    def add_user_text(self, text: str) -> None:
        """A plain user message (a nudge)."""
        ...


def converse(
    transport: ChatTransport, session: ToolSession, *, max_turns: int, max_cost_usd: float
) -> Proposal:
    """Run the conversation until submit; any failure comes out as an AgentError carrying `.usage`."""
    usage = Usage()
    try:
        return _turns(transport, session, usage, max_turns, max_cost_usd)
    except AgentError as err:
        err.usage = usage
        raise
    except Exception as err:  # a bug or an SDK surprise must not end the night with a traceback
        log.exception("%s: unexpected error during a proposal", transport.label)
        raise AgentError(f"{transport.label}: unexpected {type(err).__name__}: {err}", usage=usage) from err


def _turns(
    transport: ChatTransport, session: ToolSession, usage: Usage, max_turns: int, max_cost_usd: float
) -> Proposal:
    nudged = False
    for turn in range(1, max_turns + 1):
        reply = transport.send()
        usage.add(reply.usage)
        log_call(transport.label, turn, reply.usage, usage)
        if usage.cost_usd is not None and usage.cost_usd > max_cost_usd:
            raise AgentError(
                f"proposal cost ${usage.cost_usd:.2f} passed the cap of ${max_cost_usd:.2f} "
                f"after {usage.calls} calls"
            )
        if reply.refused:
            raise AgentError(f"{transport.label}: the model refused to propose a change")
        if not reply.tool_calls:
            if nudged:
                raise AgentError("the model stopped twice without calling submit")
            nudged = True
            transport.add_user_text(prompt.CUT_OFF_NUDGE if reply.cut_off else prompt.NUDGE)
            continue
        results = [run_call(session, call) for call in reply.tool_calls]
        if session.submission is not None:
            return Proposal(
                train_py=session.train_py,
                hypothesis=session.submission.hypothesis,
                direction=session.submission.direction,
                usage=usage,
            )
        if session.unchanged_submits >= 2:
            raise AgentError("the model submitted train.py unchanged twice")
        transport.add_tool_results(
            reply.tool_calls, results, prompt.LAST_TURN if turn == max_turns - 1 else None
        )
    raise AgentError(f"no submit after {max_turns} turns")


def retryable_status(status: int) -> bool:
    """Whether an HTTP status that outlasted the SDK's retries is worth asking again later: timeouts,
    conflicts, rate limits, overloads and server errors are; the rest (a bad key, a bad request) are not."""
    return status in (408, 409, 429) or status >= 500


def run_call(session: ToolSession, call: ToolCall) -> ToolResult:
    result = (
        ToolResult(call.problem, is_error=True) if call.problem else session.call(call.name, call.arguments)
    )
    log.debug("tool %s -> %s", call.name, result.content[:200] if result.is_error else "ok")
    return result


def log_call(label: str, turn: int, call: Usage, proposal: Usage) -> None:
    log.info(
        "%s turn %d: in %d, out %d, cache write %d, cache read %d tokens; %s (proposal %s)",
        label,
        turn,
        call.input_tokens,
        call.output_tokens,
        call.cache_write_tokens,
        call.cache_read_tokens,
        dollars(call.cost_usd),
        dollars(proposal.cost_usd),
    )


def dollars(cost: float | None) -> str:
    return "cost unknown" if cost is None else f"${cost:.4f}"
