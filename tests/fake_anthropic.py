"""A local stand-in for the Anthropic Messages API, reached by the real anthropic SDK via ANTHROPIC_BASE_URL.

It serves a scripted list of replies (messages, API errors, or raw bodies such as broken JSON) to
`POST /v1/messages`, one per request (and the model list to `GET /v1/models`, the loop's key check), and records every request body so tests can assert what the agent sent.
A request with "stream": true gets its message as server-sent events, as the Claude Code CLI asks for it.

    with FakeAnthropic([message(tool_use("submit", {...}))]) as fake:
        fake.install(monkeypatch)  # sets ANTHROPIC_BASE_URL and a dummy ANTHROPIC_API_KEY
        ...
        fake.requests[0]["system"]
"""

from __future__ import annotations

import itertools
import json
from http.server import BaseHTTPRequestHandler

from fake_server import LocalServer

DEFAULT_USAGE = {
    "input_tokens": 1000,
    "output_tokens": 200,
    "cache_creation_input_tokens": 3000,
    "cache_read_input_tokens": 0,
}
_ids = itertools.count(1)
MODEL_ID = "claude-sonnet-5-5"


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def tool_use(name: str, tool_input: object, block_id: str | None = None) -> dict:
    return {
        "type": "tool_use",
        "id": block_id or f"toolu_{next(_ids):04d}",
        "name": name,
        "input": tool_input,
    }


def message(
    *blocks: dict, stop_reason: str | None = None, usage: dict | None = None, model: str = ""
) -> dict:
    """A Messages API reply; stop_reason defaults to tool_use when a block calls a tool, else end_turn."""
    if stop_reason is None:
        stop_reason = "tool_use" if any(block["type"] == "tool_use" for block in blocks) else "end_turn"
    return {
        "id": f"msg_{next(_ids):04d}",
        "type": "message",
        "role": "assistant",
        "model": model,  # empty: filled with the requested model
        "content": list(blocks),
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": dict(usage or DEFAULT_USAGE),
    }


def error(status: int, error_type: str, error_message: str, headers: dict | None = None) -> dict:
    """An API error reply, with the body shape of platform.claude.com/docs/en/api/errors."""
    return {
        "status": status,
        "headers": headers or {},
        "body": {"type": "error", "error": {"type": error_type, "message": error_message}},
    }


def raw(body: str, status: int = 200, content_type: str = "application/json") -> dict:
    """A reply sent exactly as given: a body the SDK cannot parse, for instance."""
    return {"raw": body, "status": status, "content_type": content_type}


OVERLOADED = error(529, "overloaded_error", "Overloaded")
RATE_LIMITED = error(
    429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"
)
BAD_KEY = error(401, "authentication_error", "invalid x-api-key")


class FakeAnthropic(LocalServer):
    """A ThreadingHTTPServer on 127.0.0.1 (free port) serving scripted Messages API replies."""

    def __init__(self, script: list[dict], sdk_retry_after_ms: int = 1, toolless_reply: dict | None = None):
        """sdk_retry_after_ms: the retry-after-ms header of error replies that name no retry header.
        toolless_reply: the answer to every request without tools (a client's side calls, such as the title
        Claude Code asks for), leaving the script to the conversation."""
        self.script = list(script)
        self.toolless_reply = toolless_reply
        self.requests: list[dict] = []  # parsed JSON bodies, in arrival order
        self.raw_requests: list[str] = []
        self.headers: list[dict] = []
        self.sdk_retry_after_ms = sdk_retry_after_ms  # keeps the SDK's own retry sleeps tiny
        self.models_reply: dict | None = None  # an error(...) for GET /v1/models (e.g. a refused key)
        super().__init__()

    @property
    def url(self) -> str:
        return self.address

    def install(self, monkeypatch) -> None:
        """Point the anthropic SDK at this server with a dummy key (pytest monkeypatch)."""
        monkeypatch.setenv("ANTHROPIC_BASE_URL", self.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-dummy")
        monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)

    def all_requests_text(self) -> str:
        return "\n".join(self.raw_requests)

    def _reply_for(self, body: dict) -> tuple[int, dict, dict]:
        problem = check_request(body)
        if problem:
            return 400, {}, error(400, "invalid_request_error", problem)["body"]
        with self._lock:
            if self.toolless_reply is not None and not body.get("tools"):
                reply = self.toolless_reply
            elif not self.script:
                return (
                    400,
                    {},
                    error(400, "invalid_request_error", "fake server: no scripted reply left")["body"],
                )
            else:
                reply = self.script.pop(0)
        if body.get("stream") and reply.get("type") == "message":
            reply = raw(
                stream_events({**reply, "model": reply["model"] or body.get("model", "")}),
                content_type="text/event-stream",
            )
        if "raw" in reply:
            return reply["status"], {"content-type": reply["content_type"]}, reply
        if "status" in reply:
            headers = reply["headers"] or {"retry-after-ms": str(self.sdk_retry_after_ms)}
            return reply["status"], headers, reply["body"]
        return 200, {}, {**reply, "model": reply["model"] or body.get("model", "")}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                """The model list: the loop's check, before a night, that the key is accepted."""
                if self.path.split("?")[0] != "/v1/models":
                    return self._send(404, {}, error(404, "not_found_error", self.path)["body"])
                if fake.models_reply is not None:
                    return self._send(fake.models_reply["status"], {}, fake.models_reply["body"])
                models = [{"type": "model", "id": MODEL_ID, "display_name": MODEL_ID,
                           "created_at": "2026-01-01T00:00:00Z"}]
                self._send(200, {}, {"data": models, "has_more": False, "first_id": MODEL_ID, "last_id": MODEL_ID})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length", 0))).decode("utf-8")
                if self.path.split("?")[0] != "/v1/messages":
                    return self._send(404, {}, error(404, "not_found_error", self.path)["body"])
                with fake._lock:
                    fake.raw_requests.append(raw)
                    fake.headers.append(dict(self.headers))
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    return self._send(
                        400, {}, error(400, "invalid_request_error", "body is not JSON")["body"]
                    )
                with fake._lock:
                    fake.requests.append(body)
                self._send(*fake._reply_for(body))

            def _send(self, status: int, headers: dict, payload: dict) -> None:
                data = (payload["raw"] if "raw" in payload else json.dumps(payload)).encode("utf-8")
                self.send_response(status)
                if "content-type" not in headers:
                    self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", f"req_fake_{next(_ids):04d}")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

        return Handler


def stream_events(reply: dict) -> str:
    """A message as the Messages API streams it: server-sent events, one content block after another."""
    start = {**reply, "content": [], "stop_reason": None, "usage": {**reply["usage"], "output_tokens": 1}}
    events = [("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(reply["content"]):
        if block["type"] == "tool_use":
            opening = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        else:
            opening, delta = {**block, "text": ""}, {"type": "text_delta", "text": block["text"]}
        events += [
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opening},
            ),
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}),
            ("content_block_stop", {"type": "content_block_stop", "index": index}),
        ]
    events += [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": reply["usage"]["output_tokens"]},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)


def check_request(body: dict) -> str | None:
    """The few request rules of the real API that an agent is likely to break; None when fine."""
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            return f"{key}: Field required"
    messages = body["messages"]
    if not messages or messages[0].get("role") != "user":
        return "messages: the first message must use the user role"
    for index, item in enumerate(messages):
        if item.get("role") not in ("user", "assistant", "system") or not item.get("content"):
            return f"messages.{index}: a role of user, assistant or system and non-empty content are required"
        if item["role"] == "assistant":
            asked = [b["id"] for b in item["content"] if isinstance(b, dict) and b.get("type") == "tool_use"]
            following = messages[index + 1]["content"] if index + 1 < len(messages) else []
            answered = [
                b.get("tool_use_id")
                for b in following
                if isinstance(b, dict) and b.get("type") == "tool_result"
            ]
            if asked and (index + 1 == len(messages) or sorted(asked) != sorted(answered)):
                return f"messages.{index + 1}: each tool_use id needs a tool_result block in the next message"
    cache_breakpoints = json.dumps(body).count('"cache_control"')
    if cache_breakpoints > 4:
        return f"a maximum of 4 blocks with cache_control may be provided. Found {cache_breakpoints}."
    return None
