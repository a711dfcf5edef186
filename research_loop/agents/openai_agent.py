"""`--agent openai`: any model behind an OpenAI-compatible chat.completions API (the openai SDK), OpenAI's own
or a local server (vLLM, Ollama, llama.cpp, LM Studio) given with `--base-url`.

The three tools are offered as function tools built from TOOL_SPECS and run by the shared ToolSession; the
turn policy is conversation.py's. Small local models misbehave, and none of it ends the night: arguments
that are not JSON and unknown tool names go back as error tool results, text instead of a tool call (or a
reply cut off by the token limit) gets a nudge, and several tool calls in one reply all run. Retries are
the SDK's own; what still fails after them becomes an AgentError (retryable when waiting can help).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import NamedTuple

import openai

from ..hygiene import without_surrogates
from . import prompt
from .base import AgentError, Context, Proposal, Usage
from .conversation import Reply, ToolCall, converse, retryable_status
from .tools import TOOL_SPECS, ToolResult, ToolSession

LOCAL_SERVER_KEY = "not-needed"  # local servers ignore the key, but the SDK insists on one
QUOTA_CODE = "insufficient_quota"  # OpenAI's 429 for an account out of credit: waiting does not help


class ModelPrice(NamedTuple):
    """US dollars per million tokens."""

    input: float
    cached_input: float
    output: float


# Standard-tier prices from OpenAI's pricing page (developers.openai.com/api/docs/pricing) as reported in
# June 2026; not re-read from this machine (no network), so check them before trusting the dollar column.
# Any other model (a local one, or one missing here) has an unknown cost: None, never zero.
MODEL_PRICES: dict[str, ModelPrice] = {
    "gpt-5.5": ModelPrice(5.00, 0.50, 30.00),
    "gpt-5.4": ModelPrice(2.50, 0.25, 15.00),
    "gpt-5.4-mini": ModelPrice(0.75, 0.075, 4.50),
    "gpt-5.4-nano": ModelPrice(0.20, 0.02, 1.25),
}
DATED_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")  # gpt-5.4-2026-03-05 is priced as gpt-5.4


def model_price(model: str) -> ModelPrice | None:
    return MODEL_PRICES.get(DATED_SNAPSHOT.sub("", model))


def make_client(
    base_url: str | None = None, max_retries: int = openai.DEFAULT_MAX_RETRIES, timeout_s: float = 600.0
) -> openai.OpenAI:
    """The SDK client: OPENAI_API_KEY, and base_url or else OPENAI_BASE_URL (the SDK reads it)."""
    api_key = os.environ.get("OPENAI_API_KEY")
    if not api_key:
        if not (base_url or os.environ.get("OPENAI_BASE_URL")):
            raise AgentError(
                "OPENAI_API_KEY is not set: export your OpenAI API key, or give --base-url "
                "for a local OpenAI-compatible server (vLLM, Ollama, ...)",
                retryable=False,
            )
        api_key = LOCAL_SERVER_KEY
    return openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout_s)


def call_usage(model: str, usage: object) -> Usage:
    """One call's tokens from the usage fields (prompt_tokens includes the cached ones); None cost when the
    model is not in MODEL_PRICES or the server sent no usage."""
    if usage is None:
        return Usage(calls=1, cost_usd=None)
    prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
    details = getattr(usage, "prompt_tokens_details", None)
    cached = min(getattr(details, "cached_tokens", 0) or 0, prompt_tokens)
    tokens = Usage(
        input_tokens=prompt_tokens - cached,
        cache_read_tokens=cached,
        output_tokens=getattr(usage, "completion_tokens", 0) or 0,
        calls=1,
    )
    price = model_price(model)
    if price is None:
        tokens.cost_usd = None
    else:
        dollars = (
            tokens.input_tokens * price.input
            + cached * price.cached_input
            + tokens.output_tokens * price.output
        )
        tokens.cost_usd = dollars / 1_000_000
    return tokens


def agent_error(err: Exception, server: str = "the OpenAI API") -> AgentError:
    """An exception from the SDK, after its own retries, as an AgentError for the loop."""
    if isinstance(err, openai.APIStatusError):
        body = (
            err.body if isinstance(err.body, dict) else {}
        )  # the body's "error" object, as the SDK keeps it
        message = " ".join(str(body.get("message") or err.message).split())[:300]
        detail = f"{err.status_code}: {message}"
        if err.status_code == 401:
            return AgentError(
                f"{server} rejected the API key ({detail}); "
                "check OPENAI_API_KEY, or run with --agent builtin",
                retryable=False,
            )
        if err.status_code == 403:
            return AgentError(f"{server}: the API key may not do this ({detail})", retryable=False)
        if getattr(err, "code", None) == QUOTA_CODE:
            return AgentError(f"{server}: the account is out of quota ({detail})", retryable=False)
        if retryable_status(err.status_code):
            return AgentError(f"{server} is unavailable ({detail}) after the SDK's retries")
        return AgentError(f"{server} refused the request ({detail})", retryable=False)
    if isinstance(err, openai.APIConnectionError):  # timeouts included
        return AgentError(f"cannot reach {server} ({type(err).__name__}: {err.message})")
    if isinstance(err, (openai.APIResponseValidationError, json.JSONDecodeError)):
        return AgentError(f"{server} sent a reply that cannot be read ({type(err).__name__}: {err})")
    return AgentError(f"the OpenAI client failed ({type(err).__name__}: {err})")


def check_model(client: openai.OpenAI, model: str) -> None:
    """Before a night or a consensus: the server answers (no retries, 5 s) and serves the model; AgentError
    otherwise. A server without a model list (404) is taken at its word."""
    server = server_name(client)
    try:
        served = [listed.id for listed in client.with_options(max_retries=0, timeout=5.0).models.list()]
    except openai.NotFoundError:
        return
    except openai.APIError as err:
        raise AgentError(f"before starting: {agent_error(err, server)}", retryable=False) from None
    if served and model not in served:
        shown = ", ".join(served[:8]) + (f" and {len(served) - 8} more" if len(served) > 8 else "")
        raise AgentError(f"--llm {model}: {server} does not serve it (it serves {shown})", retryable=False)


def server_name(client: openai.OpenAI) -> str:
    """How errors name the server: OpenAI's API, or a local server by its URL."""
    if client.base_url.host == "api.openai.com":
        return "the OpenAI API"
    return f"the server at {client.base_url}"


def token_limit(client: openai.OpenAI, max_tokens: int | None) -> dict:
    """The output-token cap as a request argument (none: the server's default). OpenAI's reasoning models
    refuse max_tokens, and Ollama and older local servers know only max_tokens."""
    if max_tokens is None:
        return {}
    return {"max_completion_tokens" if client.base_url.host == "api.openai.com" else "max_tokens": max_tokens}


def reply_message(completion: object, server: str):
    """choices[0].message of a completion, or an AgentError (retryable) when the body had none."""
    choices = getattr(completion, "choices", None)
    message = getattr(choices[0], "message", None) if isinstance(choices, list) and choices else None
    if message is None:
        raise AgentError(f"{server} sent a reply that cannot be read (no choices[0].message)")
    return message


def tool_definitions() -> list[dict]:
    return [
        {
            "type": "function",
            "function": {
                "name": spec["name"],
                "description": spec["description"],
                "parameters": spec["input_schema"],
            },
        }
        for spec in TOOL_SPECS
    ]


def read_tool_call(raw: object, fallback_id: str) -> ToolCall:
    """One tool call of a reply; arguments that are not JSON, or a call that is not a function, become a
    problem that goes back to the model."""
    function = getattr(raw, "function", None)
    call_id = getattr(raw, "id", None) or fallback_id  # some local servers leave ids out
    if function is None:
        name = getattr(getattr(raw, "custom", None), "name", None) or "(unnamed)"
        return ToolCall(
            call_id,
            name,
            problem=f"error: {name} is not a function tool; call view_file, edit_train or submit",
        )
    name = getattr(function, "name", None) or "(unnamed)"
    try:
        arguments = json.loads(getattr(function, "arguments", None) or "")
    except (TypeError, ValueError) as err:
        return ToolCall(
            call_id,
            name,
            problem=f"error: the arguments of {name} are not valid JSON ({err}); send one JSON object",
        )
    return ToolCall(call_id, name, arguments)


class ChatConversation:
    """One proposal's chat.completions conversation: the transport of conversation.converse()."""

    def __init__(self, client: openai.OpenAI, model: str, max_tokens: int | None, context: Context):
        self.client = client
        self.model = model
        self.label = f"openai {model}"
        self.server = server_name(client)
        self.limit = token_limit(client, max_tokens)
        self.messages: list[dict] = [
            {"role": "system", "content": prompt.system_prompt(context.program_md)},
            {"role": "user", "content": prompt.first_message(context)},
        ]

    def send(self) -> Reply:
        try:
            completion = self.client.chat.completions.create(
                model=self.model, messages=self.messages, tools=tool_definitions(), **self.limit
            )
        except (openai.OpenAIError, json.JSONDecodeError) as err:
            raise agent_error(err, self.server) from err
        message = reply_message(completion, self.server)
        calls = [
            read_tool_call(raw, f"call_{len(self.messages)}_{index}")
            for index, raw in enumerate(message.tool_calls or [])
        ]
        self._append_assistant(message.content, calls)
        return Reply(
            tool_calls=calls,
            usage=call_usage(self.model, getattr(completion, "usage", None)),
            cut_off=completion.choices[0].finish_reason == "length",
        )

    def _append_assistant(self, text: str | None, calls: list[ToolCall]) -> None:
        """The reply as later requests repeat it: rebuilt, so made-up ids and bad JSON stay consistent."""
        if not text and not calls:
            return
        entry: dict = {"role": "assistant", "content": without_surrogates(text or "")}
        if calls:
            entry["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.name,
                        "arguments": json.dumps(without_surrogates(call.arguments)) if call.problem is None else "{}",
                    },
                }
                for call in calls
            ]
        self.messages.append(entry)

    def add_tool_results(self, calls: list[ToolCall], results: list[ToolResult], note: str | None) -> None:
        answers = [
            {"role": "tool", "tool_call_id": call.id, "content": result.content}
            for call, result in zip(calls, results)
        ]
        if note:  # on the last tool message: a user message after tool messages breaks some chat templates
            answers[-1]["content"] += "\n\n" + note
        self.messages.extend(answers)

    def add_user_text(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})


class OpenAIAgent:
    """Proposes train.py changes with any chat.completions model, OpenAI's or a local server's."""

    name = "openai"

    def __init__(
        self,
        model: str,
        repo: Path = Path("."),
        *,
        base_url: str | None = None,
        max_turns: int = 12,
        max_tokens: int | None = None,
        max_cost_usd_per_proposal: float = 2.0,
        max_retries: int = openai.DEFAULT_MAX_RETRIES,
        request_timeout_s: float = 600.0,
    ):
        self.model = model
        self.repo = Path(repo)
        self.max_turns = max_turns
        self.max_tokens = max_tokens  # None: the server's default
        self.max_cost_usd_per_proposal = max_cost_usd_per_proposal  # applies only where the price is known
        self.client = make_client(base_url, max_retries, request_timeout_s)

    def check(self) -> None:
        """Before the night: the server answers and serves the model."""
        check_model(self.client, self.model)

    def propose(self, context: Context) -> Proposal:
        """One fresh conversation that ends in a submitted train.py, or an AgentError carrying `.usage`."""
        session = ToolSession(context.repo, context.train_py, context.last_log_path)
        conversation = ChatConversation(self.client, self.model, self.max_tokens, context)
        return converse(conversation, session, max_turns=self.max_turns, max_cost_usd=self.max_cost_usd_per_proposal)
