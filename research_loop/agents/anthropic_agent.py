"""`--agent anthropic`: Claude through the Messages API with tool use and prompt caching (the anthropic SDK).

Each propose() is a fresh conversation: the instructions and program.md in the (cached) system prompt, this
iteration's material in the first user message (prompt.py), the three tools run by the shared ToolSession,
and the turn policy of conversation.py. Retries are the SDK's own (`max_retries`; it honours retry-after-ms,
retry-after and x-should-retry); what is still failing after them becomes an AgentError, retryable when
waiting can help (the loop then backs off and asks again) and not when it cannot (a rejected key).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import NamedTuple

import anthropic

from ..hygiene import without_surrogates
from . import prompt
from .base import AgentError, Context, Proposal, Usage
from .conversation import Reply, ToolCall, converse, retryable_status
from .tools import TOOL_SPECS, ToolResult, ToolSession


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

SPEND_LIMIT_CODE = "enforced_spend_limit_reached"  # a 429 that lasts until the limit is raised: not retryable
CACHE = {"type": "ephemeral"}  # 5-minute prompt cache breakpoint


def check_api_key() -> None:
    """Fail fast, before the night starts, when no API key is configured."""
    if not os.environ.get("ANTHROPIC_API_KEY"):
        raise AgentError(
            "ANTHROPIC_API_KEY is not set: export your Anthropic API key, or run with --agent builtin",
            retryable=False,
        )


def check_access(client: anthropic.Anthropic | None = None) -> None:
    """Before a night or a consensus: a key is set and accepted (one cheap authenticated call, no retries,
    5 s); AgentError with the API's reason otherwise."""
    check_api_key()
    try:
        (client or make_client()).with_options(max_retries=0, timeout=5.0).models.list(limit=1)
    except anthropic.APIError as err:
        raise AgentError(f"before starting: {agent_error(err)}", retryable=False) from None


def make_client(
    max_retries: int = anthropic.DEFAULT_MAX_RETRIES, timeout_s: float = 600.0, base_url: str | None = None
) -> anthropic.Anthropic:
    """The SDK client; it reads ANTHROPIC_API_KEY, and ANTHROPIC_BASE_URL unless base_url is given."""
    return anthropic.Anthropic(max_retries=max_retries, timeout=timeout_s, base_url=base_url)


def call_usage(model: str, usage: object) -> Usage:
    """One call's tokens from the API's usage fields, priced with MODEL_PRICES (None for other models)."""
    tokens = Usage(
        input_tokens=getattr(usage, "input_tokens", 0) or 0,
        output_tokens=getattr(usage, "output_tokens", 0) or 0,
        cache_write_tokens=getattr(usage, "cache_creation_input_tokens", 0) or 0,
        cache_read_tokens=getattr(usage, "cache_read_input_tokens", 0) or 0,
        calls=1,
    )
    price = MODEL_PRICES.get(model)
    if price is None:
        tokens.cost_usd = None
        return tokens
    dollars = (
        tokens.input_tokens * price.input
        + tokens.output_tokens * price.output
        + tokens.cache_write_tokens * price.cache_write
        + tokens.cache_read_tokens * price.cache_read
    )
    tokens.cost_usd = dollars / 1_000_000
    return tokens


def agent_error(err: Exception) -> AgentError:
    """An exception from the SDK, after its own retries, as an AgentError for the loop."""
    if isinstance(err, anthropic.APIStatusError):
        detail = f"{err.status_code} {err.type or 'error'}: {err.api_message or err.message}"
        if err.status_code == 401:
            return AgentError(
                f"the Anthropic API rejected the API key ({detail}); "
                "check ANTHROPIC_API_KEY, or run with --agent builtin",
                retryable=False,
            )
        if err.status_code == 403:
            return AgentError(f"the Anthropic API key may not do this ({detail})", retryable=False)
        if err.error_code == SPEND_LIMIT_CODE:
            return AgentError(
                f"the Anthropic spend limit is reached ({detail}); raise it in the Console", retryable=False
            )
        if retryable_status(err.status_code):
            return AgentError(f"the Anthropic API is unavailable ({detail}) after the SDK's retries")
        return AgentError(f"the Anthropic API refused the request ({detail})", retryable=False)
    if isinstance(err, anthropic.APIConnectionError):  # timeouts included
        return AgentError(f"cannot reach the Anthropic API ({type(err).__name__}: {err.message})")
    if isinstance(err, (anthropic.APIResponseValidationError, json.JSONDecodeError)):
        return AgentError(f"the Anthropic API sent a reply that cannot be read ({type(err).__name__}: {err})")
    return AgentError(f"the Anthropic client failed ({type(err).__name__}: {err})")


def unreadable(what: str) -> AgentError:
    return AgentError(f"the Anthropic API sent a reply that cannot be read ({what})")


def system_blocks(program_md: str) -> list[dict]:
    """The stable part of the prompt; the breakpoint on the last block caches tools + system together."""
    return [
        {"type": "text", "text": prompt.INSTRUCTIONS},
        {"type": "text", "text": prompt.program_section(program_md), "cache_control": dict(CACHE)},
    ]


def tool_definitions() -> list[dict]:
    tools = copy.deepcopy(TOOL_SPECS)
    tools[-1]["cache_control"] = dict(CACHE)
    return tools


def first_user_blocks(context: Context) -> list[dict]:
    blocks = [{"type": "text", "text": text} for text in prompt.first_message_sections(context)]
    blocks[-1]["cache_control"] = dict(CACHE)  # later turns of this proposal re-read all of it
    return blocks


def with_moving_breakpoint(messages: list[dict]) -> list[dict]:
    """The request's messages with a cache breakpoint on the newest user message (4 breakpoints at most)."""
    if len(messages) < 2:
        return messages
    last = copy.deepcopy(messages[-1])
    last["content"][-1]["cache_control"] = dict(CACHE)
    return messages[:-1] + [last]


class MessagesConversation:
    """One proposal's Messages API conversation: the transport of conversation.converse()."""

    def __init__(self, client: anthropic.Anthropic, model: str, max_tokens: int, context: Context):
        self.client = client
        self.model = model
        self.max_tokens = max_tokens
        self.label = f"anthropic {model}"
        self.system = system_blocks(context.program_md)
        self.messages: list[dict] = [{"role": "user", "content": first_user_blocks(context)}]

    def send(self) -> Reply:
        try:
            response = self.client.messages.create(
                model=self.model,
                max_tokens=self.max_tokens,
                system=self.system,
                tools=tool_definitions(),
                messages=with_moving_breakpoint(self.messages),
            )
        except (anthropic.AnthropicError, json.JSONDecodeError) as err:
            raise agent_error(err) from err
        if not isinstance(response, anthropic.types.Message) or not isinstance(response.content, list):
            raise unreadable(f"expected a message, got {type(response).__name__}")
        try:
            content = [block.to_dict() for block in response.content]  # verbatim, thinking blocks included
            calls = [
                ToolCall(id=block["id"], name=block["name"], arguments=block.get("input"))
                for block in content
                if block.get("type") == "tool_use"
            ]
        except (AttributeError, KeyError, TypeError) as err:
            raise unreadable(f"a content block is malformed: {err}") from err
        if content:  # repeated in every later request: a lone surrogate would make it unencodable
            self.messages.append({"role": "assistant", "content": without_surrogates(content)})
        return Reply(
            tool_calls=calls,
            usage=call_usage(self.model, response.usage),
            cut_off=response.stop_reason == "max_tokens",
            refused=response.stop_reason == "refusal",
        )

    def add_tool_results(self, calls: list[ToolCall], results: list[ToolResult], note: str | None) -> None:
        blocks: list[dict] = [
            {
                "type": "tool_result",
                "tool_use_id": call.id,
                "content": result.content,
                "is_error": result.is_error,
            }
            for call, result in zip(calls, results)
        ]
        if note:
            blocks.append({"type": "text", "text": note})
        self.messages.append({"role": "user", "content": blocks})

    def add_user_text(self, text: str) -> None:
        self.messages.append({"role": "user", "content": [{"type": "text", "text": text}]})


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
        max_retries: int = anthropic.DEFAULT_MAX_RETRIES,
        request_timeout_s: float = 600.0,
    ):
        if model not in MODEL_PRICES:
            raise AgentError(f"unknown model {model!r}; allowed: {', '.join(MODEL_PRICES)}", retryable=False)
        self.model = model
        self.repo = Path(repo)
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.max_cost_usd_per_proposal = max_cost_usd_per_proposal
        self.client = make_client(max_retries, request_timeout_s)

    def check(self) -> None:
        """Before the night: the key is accepted."""
        check_access(self.client)

    def propose(self, context: Context) -> Proposal:
        """One fresh conversation that ends in a submitted train.py, or an AgentError carrying `.usage`."""
        check_api_key()  # the SDK would raise a bare TypeError without one
        session = ToolSession(context.repo, context.train_py, context.last_log_path)
        conversation = MessagesConversation(self.client, self.model, self.max_tokens, context)
        return converse(conversation, session, max_turns=self.max_turns, max_cost_usd=self.max_cost_usd_per_proposal)
