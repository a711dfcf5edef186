"""One question, one answer, no tools: ask(backend, model, system, user) -> (text, Usage), through the same
SDKs, retries (the SDK's own) and error mapping (AgentError) as the agents; for features that want a model's
opinion rather than a proposal, such as asking several models for a consensus.
"""

from __future__ import annotations

import json
import logging

import anthropic
import openai

from . import anthropic_agent, openai_agent
from .base import AgentError, Usage
from .conversation import dollars

log = logging.getLogger(__name__)

BACKENDS = ("anthropic", "openai")


def ask(
    backend: str,
    model: str,
    system: str,
    user: str,
    base_url: str | None = None,
    *,
    max_tokens: int = 4_096,
    max_retries: int = 2,
    timeout_s: float = 600.0,
) -> tuple[str, Usage]:
    """The model's text answer and what it cost (cost None where the price is unknown); errors: AgentError."""
    if backend not in BACKENDS:
        raise AgentError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}", retryable=False)
    try:
        if backend == "anthropic":
            text, usage = _ask_anthropic(model, system, user, base_url, max_tokens, max_retries, timeout_s)
        else:
            text, usage = _ask_openai(model, system, user, base_url, max_tokens, max_retries, timeout_s)
    except AgentError:
        raise
    except Exception as err:  # an SDK surprise must come out as an AgentError, like everything else here
        raise AgentError(f"{backend} {model}: unexpected {type(err).__name__}: {err}") from err
    log.info(
        "%s %s one-shot: in %d, out %d tokens; %s",
        backend,
        model,
        usage.tokens_in,
        usage.output_tokens,
        dollars(usage.cost_usd),
    )
    return text, usage


def _ask_anthropic(model, system, user, base_url, max_tokens, max_retries, timeout_s) -> tuple[str, Usage]:
    anthropic_agent.check_api_key()
    client = anthropic_agent.make_client(max_retries, timeout_s, base_url)
    try:
        response = client.messages.create(
            model=model, max_tokens=max_tokens, system=system, messages=[{"role": "user", "content": user}]
        )
    except (anthropic.AnthropicError, json.JSONDecodeError) as err:
        raise anthropic_agent.agent_error(err) from err
    if not isinstance(response, anthropic.types.Message) or not isinstance(response.content, list):
        raise anthropic_agent.unreadable(f"expected a message, got {type(response).__name__}")
    usage = anthropic_agent.call_usage(model, response.usage)
    if response.stop_reason == "refusal":
        raise AgentError(f"anthropic {model}: the model refused to answer", usage=usage)
    text = "".join(block.text for block in response.content if getattr(block, "type", None) == "text")
    return _non_empty(text, f"anthropic {model}", usage), usage


def _ask_openai(model, system, user, base_url, max_tokens, max_retries, timeout_s) -> tuple[str, Usage]:
    client = openai_agent.make_client(base_url, max_retries, timeout_s)
    server = openai_agent.server_name(client)
    try:
        completion = client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            **openai_agent.token_limit(client, max_tokens),
        )
    except (openai.OpenAIError, json.JSONDecodeError) as err:
        raise openai_agent.agent_error(err, server) from err
    message = openai_agent.reply_message(completion, server)
    usage = openai_agent.call_usage(model, getattr(completion, "usage", None))
    return _non_empty(
        message.content if isinstance(message.content, str) else "", f"openai {model}", usage
    ), usage


def _non_empty(text: str, label: str, usage: Usage) -> str:
    if not text.strip():
        raise AgentError(f"{label}: the model answered with no text", usage=usage)
    return text
