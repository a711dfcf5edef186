"""`--agent NAME` -> an agent. Each backend is imported only when asked for, so a missing optional extra
(claude-agent-sdk, optuna) is a one-line message saying what to install, never an import error at start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .base import Agent, AgentError

LLM_AGENTS = ("anthropic", "openai", "claude-code")  # agents that write code: a sandbox is required
SEARCH_AGENTS = ("builtin", "optuna", "null")
AGENTS = (*LLM_AGENTS, *SEARCH_AGENTS)


class AgentSetupError(Exception):
    """The agent cannot be built (no key, unknown model, a missing extra); one line."""


@dataclass
class AgentOptions:
    name: str
    llm: str | None = None
    base_url: str | None = None
    seed: int = 0
    labels: tuple[str, ...] = ()
    entity_types: tuple[str, ...] = ()
    aux_names: tuple[str, ...] = ()
    storage: Path | None = None  # the Optuna study's SQLite file (runs/<tag>/optuna.db)


def writes_code(name: str) -> bool:
    return name in LLM_AGENTS


def make_agent(options: AgentOptions, repo: Path) -> Agent:
    name = options.name
    if options.llm and name not in LLM_AGENTS:
        raise AgentSetupError(f"--llm is for an LLM agent ({', '.join(LLM_AGENTS)}), not --agent {name}")
    if options.base_url and name != "openai":
        raise AgentSetupError("--base-url is for --agent openai")
    try:
        if name == "anthropic":
            from . import anthropic_agent

            model = options.llm or anthropic_agent.DEFAULT_MODEL
            if model not in anthropic_agent.MODEL_PRICES:
                raise AgentSetupError(f"--llm {model}: not an allowed model; choose one of "
                                      f"{', '.join(anthropic_agent.MODEL_PRICES)}")
            anthropic_agent.check_api_key()
            return anthropic_agent.AnthropicAgent(model=model, repo=repo)
        if name == "openai":
            from . import openai_agent

            if not options.llm:
                raise AgentSetupError("--agent openai needs --llm MODEL (the model name your server serves)")
            return openai_agent.OpenAIAgent(options.llm, repo, base_url=options.base_url)
        if name == "claude-code":
            from . import claude_code_agent

            claude_code_agent.load_sdk()
            return claude_code_agent.ClaudeCodeAgent(options.llm, repo)
        if name == "optuna":
            from . import optuna_agent

            optuna_agent.require_optuna()
            return optuna_agent.OptunaAgent(list(options.labels), list(options.entity_types), seed=options.seed,
                                            aux_names=list(options.aux_names), storage=options.storage)
        if name == "builtin":
            from .builtin_agent import BuiltinAgent

            return BuiltinAgent(list(options.labels), list(options.entity_types), seed=options.seed,
                                aux_names=list(options.aux_names))
        if name == "null":
            from .builtin_agent import NullAgent

            return NullAgent()
    except AgentError as exc:
        raise AgentSetupError(str(exc)) from None
    except ImportError as exc:
        raise AgentSetupError(str(exc).splitlines()[0]) from None
    raise AgentSetupError(f"--agent {name}: unknown; choose one of {', '.join(AGENTS)}")
