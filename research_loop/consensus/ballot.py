"""The consensus pass's asking: the voters (BACKEND:MODEL, checked before anything is asked) and the
ballot that puts each question to each of them through agents/oneshot.py, answering from the per-user cache
when it can and stopping at the cost cap.

Cache: cache_root()/consensus-answers/<ab>/<key>.json, key = sha256 of the backend, model, base URL, system
prompt and question; only answers are cached (errors are asked again).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from research_loop.agents import oneshot
from research_loop.agents.anthropic_agent import MODEL_PRICES as ANTHROPIC_PRICES
from research_loop.agents.base import AgentError, Usage
from research_loop.night.folders import cache_root
from research_loop.safe_io import read_text, write_atomically

CACHE_DIR = "consensus-answers"
CACHE_VERSION = 1  # part of every cache key: bump it when the meaning of an answer changes
MAX_TOKENS = 2_048  # one small JSON object, with room for a reasoning model's thinking
PROGRESS_EVERY = 200  # votes between progress lines


class ConsensusError(Exception):
    """A one-line, user-facing reason the consensus cannot run (a model, a key, the run, its files)."""


@dataclass(frozen=True)
class Voter:
    backend: str
    model: str
    base_url: str | None  # openai: models only

    @property
    def label(self) -> str:
        return f"{self.backend}:{self.model}"


def parse_voters(llms: list[str], base_url: str | None) -> list[Voter]:
    """BACKEND:MODEL strings as voters, each checked: a known backend, an allowed model, a key."""
    if not llms:
        raise ConsensusError("no models: give --llm BACKEND:MODEL at least once (anthropic:claude-sonnet-5-5, "
                             "openai:gpt-5.4-mini)")
    voters = []
    for text in llms:
        backend, colon, model = text.partition(":")
        if not colon or not model:
            raise ConsensusError(f"--llm {text!r}: expected BACKEND:MODEL, like anthropic:claude-sonnet-5-5")
        if backend not in oneshot.BACKENDS:
            raise ConsensusError(f"--llm {text!r}: unknown backend {backend!r}; choose one of "
                                 f"{', '.join(oneshot.BACKENDS)}")
        if backend == "anthropic" and model not in ANTHROPIC_PRICES:
            raise ConsensusError(f"--llm {text!r}: unknown anthropic model; allowed: {', '.join(ANTHROPIC_PRICES)}")
        if backend == "anthropic" and not os.environ.get("ANTHROPIC_API_KEY"):
            raise ConsensusError(f"--llm {text!r}: ANTHROPIC_API_KEY is not set")
        if backend == "openai" and not (os.environ.get("OPENAI_API_KEY") or base_url
                                        or os.environ.get("OPENAI_BASE_URL")):
            raise ConsensusError(f"--llm {text!r}: OPENAI_API_KEY is not set (or give --base-url for a local "
                                 "OpenAI-compatible server)")
        voter = Voter(backend, model, base_url if backend == "openai" else None)
        if voter in voters:
            raise ConsensusError(f"--llm {text!r} is given twice; each model votes once")
        voters.append(voter)
    if base_url and not any(voter.backend == "openai" for voter in voters):
        raise ConsensusError(f"--base-url {base_url} is for openai: models, and none is given")
    return voters


def check_voters(voters: list[Voter]) -> None:
    """Before any question: each voter's key is accepted, its server answers and serves its model."""
    from research_loop.agents import anthropic_agent, openai_agent

    for voter in voters:
        try:
            if voter.backend == "anthropic":
                anthropic_agent.check_access()
            else:
                openai_agent.check_model(openai_agent.make_client(voter.base_url), voter.model)
        except AgentError as exc:
            raise ConsensusError(f"--llm {voter.label}: {exc}") from None


class Ballot:
    """Puts questions to voters: the cached answer when there is one, else the model, while the cost cap
    allows (an answer costs nothing twice). A model's first error that waiting cannot fix (a rejected key, an
    unknown model) stops asking it; every question not asked is an abstention."""

    def __init__(self, system: str, max_cost_usd: float, echo: Callable):
        self.system, self.max_cost_usd, self.echo = system, max_cost_usd, echo
        self.lock = threading.Lock()
        self.spent, self.asked, self.cached, self.cap_hit = 0.0, 0, 0, False
        self.stopped: dict[str, str] = {}  # voter -> the error that stopped it
        self.interrupted = self.cache_failed = False

    def key(self, voter: Voter, user: str) -> str:
        parts = [CACHE_VERSION, voter.backend, voter.model, voter.base_url, self.system, user]
        return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()

    def cached_answer(self, key: str) -> dict | None:
        try:
            entry = json.loads(read_text(cache_root() / CACHE_DIR / key[:2] / f"{key}.json"))
            return {"text": str(entry["text"]), "usage": Usage(**entry["usage"])}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def ask(self, voter: Voter, user: str) -> dict:
        """{"text" (None: no answer), "usage", "source" (cache, asked, not asked), "problem"}."""
        key = self.key(voter, user)
        entry = self.cached_answer(key)
        if entry is not None:
            with self.lock:
                self.cached += 1
            return {**entry, "source": "cache", "problem": ""}
        with self.lock:
            why = ("interrupted" if self.interrupted else self.stopped.get(voter.label)
                   or ("the cost cap was reached" if self.spent >= self.max_cost_usd else None))
            self.cap_hit = self.cap_hit or why == "the cost cap was reached"
            self.asked += why is None
        if why is not None:
            return {"text": None, "usage": Usage(), "source": "not asked", "problem": f"not asked: {why}"}
        try:
            text, usage = oneshot.ask(voter.backend, voter.model, self.system, user, voter.base_url,
                                      max_tokens=MAX_TOKENS)
        except AgentError as exc:
            with self.lock:
                self.spent += exc.usage.cost_usd or 0.0
                if not exc.retryable and voter.label not in self.stopped:
                    self.stopped[voter.label] = str(exc)
                    self.echo(f"{voter.label}: {exc}; not asking it again")
            return {"text": None, "usage": exc.usage, "source": "asked", "problem": f"error: {exc}"}
        entry = {"backend": voter.backend, "model": voter.model, "base_url": voter.base_url, "text": text,
                 "usage": asdict(usage)}
        with self.lock:  # one writer at a time: write_atomically's temporary name is per process
            self.spent += usage.cost_usd or 0.0
            try:
                write_atomically(cache_root() / CACHE_DIR / key[:2] / f"{key}.json", json.dumps(entry) + "\n")
            except OSError as exc:
                if not self.cache_failed:
                    self.echo(f"cannot cache answers in {cache_root() / CACHE_DIR} ({exc}); a rerun asks again")
                self.cache_failed = True
        return {"text": text, "usage": usage, "source": "asked", "problem": ""}


def collect(ballot: Ballot, voters: list[Voter], questions: list[str], workers: int, echo: Callable) -> list:
    """Every voter's answer to every question, in order (a list per question); Ctrl-C stops the asking."""
    tasks = [(index, voter) for index in range(len(questions)) for voter in voters]
    answers: list[list] = [[] for _ in questions]
    executor = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = [executor.submit(ballot.ask, voter, questions[index]) for index, voter in tasks]
        for done, ((index, _), future) in enumerate(zip(tasks, futures), start=1):
            answers[index].append(future.result())
            if done % PROGRESS_EVERY == 0:
                echo(f"{done}/{len(tasks)} votes ({ballot.cached} from the cache, ${ballot.spent:.2f} spent)")
    except KeyboardInterrupt:
        ballot.interrupted = True
        executor.shutdown(wait=True, cancel_futures=True)
        raise ConsensusError(f"interrupted: {ballot.asked} answers asked so far are cached; run the same command "
                             "again to go on") from None
    executor.shutdown(wait=True)
    return answers
