"""`--agent NAME` -> an agent. Each backend is imported only when asked for, so a missing optional extra
(claude-agent-sdk, optuna) is a one-line message saying what to install, never an import error at start."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .base import Agent, AgentError


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
    refused: tuple[dict, ...] = ()  # the search space's changes train.py --check refused (needs_labels backends)


def _anthropic(options: AgentOptions, repo: Path) -> Agent:
    from . import anthropic_agent

    model = options.llm or anthropic_agent.DEFAULT_MODEL
    if model not in anthropic_agent.MODEL_PRICES:
        raise AgentSetupError(f"--llm {model}: not an allowed model; choose one of "
                              f"{', '.join(anthropic_agent.MODEL_PRICES)}")
    anthropic_agent.check_api_key()
    return anthropic_agent.AnthropicAgent(model=model, repo=repo)


def _openai(options: AgentOptions, repo: Path) -> Agent:
    from . import openai_agent

    if not options.llm:
        raise AgentSetupError("--agent openai needs --llm MODEL (the model name your server serves)")
    return openai_agent.OpenAIAgent(options.llm, repo, base_url=options.base_url)


def _claude_code(options: AgentOptions, repo: Path) -> Agent:
    from . import claude_code_agent

    claude_code_agent.load_sdk()
    return claude_code_agent.ClaudeCodeAgent(options.llm, repo)


def _optuna(options: AgentOptions, repo: Path) -> Agent:
    from . import optuna_agent

    optuna_agent.require_optuna()
    return optuna_agent.OptunaAgent(list(options.labels), list(options.entity_types), seed=options.seed,
                                    aux_names=list(options.aux_names), storage=options.storage,
                                    refused=list(options.refused))


def _builtin(options: AgentOptions, repo: Path) -> Agent:
    from .builtin_agent import BuiltinAgent

    return BuiltinAgent(list(options.labels), list(options.entity_types), seed=options.seed,
                        aux_names=list(options.aux_names), refused=list(options.refused))


def _null(options: AgentOptions, repo: Path) -> Agent:
    from .builtin_agent import NullAgent

    return NullAgent()


@dataclass(frozen=True)
class Backend:
    """One `--agent NAME`: how to build it, and what the loop must know about it."""

    build: Callable[[AgentOptions, Path], Agent]  # imports its module (an optional extra) only when called
    writes_code: bool  # an LLM writes train.py: the sandbox is required
    takes_llm: bool = False  # --llm picks its model
    needs_labels: bool = False  # it searches the config block: AgentOptions carries the data's labels and
    # what train.py --check refused of the search space
    base_url: bool = False  # --base-url applies


# --agent NAME -> its backend; a new agent is one module and one line here.
BACKENDS: dict[str, Backend] = {
    "anthropic": Backend(_anthropic, writes_code=True, takes_llm=True),
    "openai": Backend(_openai, writes_code=True, takes_llm=True, base_url=True),
    "claude-code": Backend(_claude_code, writes_code=True, takes_llm=True),
    "builtin": Backend(_builtin, writes_code=False, needs_labels=True),
    "optuna": Backend(_optuna, writes_code=False, needs_labels=True),
    "null": Backend(_null, writes_code=False),
}


def writes_code(name: str) -> bool:
    return name not in BACKENDS or BACKENDS[name].writes_code  # unknown: the safe answer


def make_agent(options: AgentOptions, repo: Path) -> Agent:
    name = options.name
    if name not in BACKENDS:
        raise AgentSetupError(f"--agent {name}: unknown; choose one of {', '.join(BACKENDS)}")
    backend = BACKENDS[name]
    if options.llm and not backend.takes_llm:
        llm_agents = ", ".join(other for other, entry in BACKENDS.items() if entry.takes_llm)
        raise AgentSetupError(f"--llm is for an LLM agent ({llm_agents}), not --agent {name}")
    if options.base_url and not backend.base_url:
        raise AgentSetupError(f"--base-url is for --agent {', '.join(n for n, b in BACKENDS.items() if b.base_url)}")
    try:
        return backend.build(options, repo)
    except AgentError as exc:
        raise AgentSetupError(str(exc)) from None
    except ImportError as exc:
        raise AgentSetupError(str(exc).splitlines()[0]) from None
