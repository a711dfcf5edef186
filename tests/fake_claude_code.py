"""A stand-in for the Claude Code CLI behind claude-agent-sdk's Transport interface, so the agent runs offline
through the real SDK client: its control protocol, its in-process MCP server and its permission callback.

The fake plays scripted model turns the way the CLI does: each assistant block as a message, each call of an
mcp__ tool as an MCP `tools/call` through the SDK (after the MCP handshake), each other tool as a
`can_use_tool` permission request, the tool results as a user message, and a `result` message with running
totals of cost and tokens when a turn ends. It honours the options a real CLI would get as flags: max_turns
and max_budget_usd.

    fake = FakeClaudeCode([turn(tool_use("mcp__ner__edit_train", {...})), turn(text("done"))])
    agent = ClaudeCodeAgent(repo=repo, transport_factory=fake.connect_with)
    fake.options, fake.prompts, fake.tool_results, fake.offered_tools, fake.permission_answers
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import mcp.types
from claude_agent_sdk import Transport

MODEL = "claude-fake-1"
DEFAULT_TURN_COST = 0.01  # dollars per scripted model turn
DEFAULT_TURN_TOKENS = {
    "input_tokens": 1000,
    "output_tokens": 200,
    "cache_read_input_tokens": 3000,
    "cache_creation_input_tokens": 0,
}
_ids = itertools.count(1)


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def tool_use(name: str, tool_input: object) -> dict:
    return {"type": "tool_use", "id": f"toolu_{next(_ids):04d}", "name": name, "input": tool_input}


@dataclass
class Turn:
    """One model turn: its content blocks, what it cost, and the API error the CLI reports with it, if any."""

    blocks: list[dict]
    cost_usd: float = DEFAULT_TURN_COST
    tokens: dict = field(default_factory=lambda: dict(DEFAULT_TURN_TOKENS))
    api_error_status: int | None = None  # the turn fails: an error result with this HTTP status
    error: str | None = None  # AssistantMessage.error, e.g. "authentication_failed"


def turn(*blocks: dict, cost_usd: float = DEFAULT_TURN_COST) -> Turn:
    return Turn(list(blocks), cost_usd=cost_usd)


def api_error(status: int, message: str, error: str | None = None) -> Turn:
    """A turn that ends on an API error after the CLI's own retries (cost nothing)."""
    return Turn(
        [text(f"API Error: {status} {message}")],
        cost_usd=0.0,
        tokens={},
        api_error_status=status,
        error=error,
    )


class TransportFailure:
    """A script step at which the transport raises (the CLI crashed, or printed a line that is not JSON)."""

    def __init__(self, error: Exception):
        self.error = error


class FakeClaudeCode(Transport):
    """The CLI's side of the SDK's stream-json control protocol, playing a script."""

    def __init__(self, script: list, server: str = "ner"):
        self.script = list(script)
        self.server = server
        self.options = None
        self.cwd_at_connect: list[str] | None = None  # the scratch folder's contents when the session began
        self.prompts: list[str] = []  # user messages the SDK sent (the first message, nudges)
        self.user_messages: list[dict] = []
        self.tool_results: list[list[dict]] = []  # per model turn played: the results fed back ([] for none)
        self.offered_tools: list[str] = []  # from the MCP tools/list
        self.permission_answers: list[dict] = []  # what can_use_tool answered
        self.interrupts = 0
        self.model_turns = 0  # scripted turns played
        self.closed = False
        self._ready = False
        self._inbox_send, self._inbox = anyio.create_memory_object_stream(100)
        self._pending: dict[str, dict] = {}
        self._events: dict[str, anyio.Event] = {}
        self._mcp_ready = False
        self._cost = 0.0
        self._totals = {
            "inputTokens": 0,
            "outputTokens": 0,
            "cacheReadInputTokens": 0,
            "cacheCreationInputTokens": 0,
        }
        self._turns = 0
        self._interrupted = False

    def connect_with(self, options) -> FakeClaudeCode:
        """The agent's transport_factory: record the options a real CLI would get as flags."""
        self.options = options
        cwd = Path(options.cwd)
        self.cwd_at_connect = sorted(os.listdir(cwd)) if cwd.is_dir() else None
        return self

    # ----- Transport -----

    async def connect(self) -> None:
        self._ready = True

    def is_ready(self) -> bool:
        return self._ready

    async def end_input(self) -> None:
        await self._inbox_send.aclose()

    async def close(self) -> None:
        self.closed = True
        self._ready = False
        self._inbox_send.close()

    async def write(self, data: str) -> None:
        for line in data.splitlines():
            if not line.strip():
                continue
            message = json.loads(line)
            if message.get("type") == "control_response":
                response = message["response"]
                self._pending[response["request_id"]] = response
                self._events[response["request_id"]].set()
            elif (
                message.get("type") == "control_request" and message["request"].get("subtype") == "interrupt"
            ):
                self.interrupts += 1
                self._interrupted = True
                await self._inbox_send.send(message)
            else:
                await self._inbox_send.send(message)

    async def read_messages(self):
        async for message in self._inbox:
            if message.get("type") == "control_request":
                yield {
                    "type": "control_response",
                    "response": {"subtype": "success", "request_id": message["request_id"], "response": {}},
                }
            elif message.get("type") == "user":
                self.user_messages.append(message)
                content = message["message"]["content"]
                self.prompts.append(content if isinstance(content, str) else json.dumps(content))
                async for out in self._play_query():
                    yield out

    # ----- the CLI's agent loop -----

    async def _play_query(self):
        """Model turns until one makes no tool call, or a limit or an error ends the query."""
        self._turns = 0
        self._interrupted = False
        last_text = ""
        while True:
            if self._interrupted:
                yield self._result("error_during_execution", is_error=True, terminal_reason="aborted_tools")
                return
            if self.options.max_turns and self._turns >= self.options.max_turns:
                limit = f"Reached maximum number of turns ({self.options.max_turns})"
                yield self._result("error_max_turns", is_error=True, errors=[limit])
                return
            if not self.script:
                yield self._result(
                    "error_during_execution", is_error=True, errors=["fake: no scripted turn left"]
                )
                return
            step = self.script.pop(0)
            if isinstance(step, TransportFailure):
                raise step.error
            self._turns += 1
            self.model_turns += 1
            message_id = f"msg_{next(_ids):04d}"
            for block in step.blocks:  # the CLI sends each content block as its own message, under one id
                yield self._assistant(message_id, block, step)
                if block["type"] == "text":
                    last_text = block["text"]
            self._count(step)
            if step.api_error_status is not None:
                self.tool_results.append([])
                yield self._result(
                    "success", is_error=True, result=last_text, api_error_status=step.api_error_status
                )
                return
            if self.options.max_budget_usd is not None and self._cost > self.options.max_budget_usd:
                self.tool_results.append([])
                yield self._result("error_max_budget_usd", is_error=True)
                return
            calls = [block for block in step.blocks if block["type"] == "tool_use"]
            if not calls:
                self.tool_results.append([])
                yield self._result("success", result=last_text)
                return
            results = []
            for call in calls:
                async for out in self._run_tool(call, results):
                    yield out
            self.tool_results.append(results)
            yield {
                "type": "user",
                "message": {"role": "user", "content": results},
                "parent_tool_use_id": None,
                "session_id": "fake-session",
            }

    async def _run_tool(self, call: dict, results: list):
        """One tool call: ours through the SDK's MCP server, anything else past the permission callback."""
        prefix = f"mcp__{self.server}__"
        if call["name"].startswith(prefix):
            if not self._mcp_ready:
                async for out in self._mcp_handshake():
                    yield out
            request = {
                "jsonrpc": "2.0",
                "id": next(_ids),
                "method": "tools/call",
                "params": {"name": call["name"][len(prefix) :], "arguments": call["input"]},
            }
            async for out in self._control(
                {"subtype": "mcp_message", "server_name": self.server, "message": request}
            ):
                yield out
            answer = self._answer["mcp_response"]
            if "error" in answer:
                results.append(self._tool_result(call, f"MCP error: {answer['error']['message']}", True))
            else:
                content = "".join(part.get("text", "") for part in answer["result"]["content"])
                results.append(self._tool_result(call, content, answer["result"].get("isError", False)))
            return
        async for out in self._control(
            {
                "subtype": "can_use_tool",
                "tool_name": call["name"],
                "input": call["input"],
                "tool_use_id": call["id"],
            }
        ):
            yield out
        self.permission_answers.append(self._answer)
        if self._answer.get("behavior") == "allow":
            results.append(
                self._tool_result(call, "fake: a built-in tool was ALLOWED and would have run", False)
            )
        else:
            results.append(self._tool_result(call, f"Permission denied: {self._answer.get('message')}", True))

    async def _mcp_handshake(self):
        initialize = {
            "jsonrpc": "2.0",
            "id": next(_ids),
            "method": "initialize",
            "params": {
                "protocolVersion": mcp.types.LATEST_PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "fake-claude-code", "version": "0"},
            },
        }
        for message in (
            initialize,
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": next(_ids), "method": "tools/list"},
        ):
            async for out in self._control(
                {"subtype": "mcp_message", "server_name": self.server, "message": message}
            ):
                yield out
        self.offered_tools = [tool["name"] for tool in self._answer["mcp_response"]["result"]["tools"]]
        self._mcp_ready = True

    async def _control(self, request: dict):
        """Send a control request to the SDK and wait for its answer (left in self._answer)."""
        request_id = f"cli_req_{next(_ids)}"
        self._events[request_id] = anyio.Event()
        yield {"type": "control_request", "request_id": request_id, "request": request}
        await self._events[request_id].wait()
        response = self._pending.pop(request_id)
        if response.get("subtype") == "error":
            raise RuntimeError(
                f"fake: the SDK answered a control request with an error: {response.get('error')}"
            )
        self._answer = response.get("response", {})

    # ----- message shapes -----

    def _count(self, step: Turn) -> None:
        self._cost += step.cost_usd
        for wire, key in (
            ("input_tokens", "inputTokens"),
            ("output_tokens", "outputTokens"),
            ("cache_read_input_tokens", "cacheReadInputTokens"),
            ("cache_creation_input_tokens", "cacheCreationInputTokens"),
        ):
            self._totals[key] += step.tokens.get(wire, 0)

    def _assistant(self, message_id: str, block: dict, step: Turn) -> dict:
        message = {
            "type": "assistant",
            "parent_tool_use_id": None,
            "session_id": "fake-session",
            "message": {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": MODEL,
                "content": [block],
                "stop_reason": None,
                "usage": step.tokens,
            },
        }
        if step.error:
            message["error"] = step.error
        return message

    def _result(self, subtype: str, *, is_error: bool = False, **extra) -> dict:
        return {
            "type": "result",
            "subtype": subtype,
            "duration_ms": 5,
            "duration_api_ms": 4,
            "is_error": is_error,
            "num_turns": self._turns,
            "session_id": "fake-session",
            "total_cost_usd": round(self._cost, 6),
            "usage": {},
            "modelUsage": {MODEL: {**self._totals, "costUSD": self._cost}},
            **extra,
        }

    @staticmethod
    def _tool_result(call: dict, content: str, is_error: bool) -> dict:
        return {"type": "tool_result", "tool_use_id": call["id"], "content": content, "is_error": is_error}
