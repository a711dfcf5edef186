"""A local stand-in for an OpenAI-compatible chat.completions server (OpenAI, vLLM, Ollama, ...), reached
by the real openai SDK through base_url.

It serves a scripted list of replies (completions, API errors, or raw bodies such as broken JSON) to
`POST /v1/chat/completions`, one per request, and records every request body and its headers.

    with FakeOpenAI([completion(tool_call("submit", {...}))]) as fake:
        OpenAIAgent("gpt-5.4-mini", repo, base_url=fake.url)
        fake.requests[0]["messages"]
"""

from __future__ import annotations

import itertools
import json
import time
from http.server import BaseHTTPRequestHandler

from fake_server import LocalServer

DEFAULT_USAGE = {
    "prompt_tokens": 1000,
    "completion_tokens": 200,
    "total_tokens": 1200,
    "prompt_tokens_details": {"cached_tokens": 0},
}
_ids = itertools.count(1)


def tool_call(name: str, arguments: object, call_id: str | None = None) -> dict:
    """A function call; a str `arguments` is sent as it is (broken JSON, for instance)."""
    return {
        "id": call_id if call_id is not None else f"call_{next(_ids):04d}",
        "type": "function",
        "function": {
            "name": name,
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        },
    }


def completion(
    *calls: dict,
    content: str | None = None,
    finish_reason: str | None = None,
    usage: dict | None = DEFAULT_USAGE,
    model: str = "",
) -> dict:
    """A chat.completion; finish_reason defaults to tool_calls when there are calls, else stop; usage None
    leaves the usage field out, as some local servers do."""
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = list(calls)
    reply = {
        "id": f"chatcmpl-{next(_ids):04d}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,  # empty: filled with the requested model
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason or ("tool_calls" if calls else "stop"),
            }
        ],
    }
    if usage is not None:
        reply["usage"] = dict(usage)
    return reply


def error(status: int, message: str, code: str | None = None, headers: dict | None = None) -> dict:
    """An API error reply, with OpenAI's body shape."""
    return {
        "status": status,
        "headers": headers or {},
        "body": {"error": {"message": message, "type": "api_error", "param": None, "code": code}},
    }


def slow(seconds: float, reply: dict) -> dict:
    """The reply, after the server thought for `seconds`."""
    return {"delay": seconds, "reply": reply}


def raw(body: str, status: int = 200, content_type: str = "application/json") -> dict:
    """A reply sent exactly as given: a body the SDK cannot parse, for instance."""
    return {"raw": body, "status": status, "content_type": content_type}


class FakeOpenAI(LocalServer):
    """A ThreadingHTTPServer on 127.0.0.1 (free port) serving scripted chat.completions replies."""

    def __init__(self, script: list[dict], retry_after_ms: int = 10, models: tuple[str, ...] | None = None):
        """retry_after_ms: the retry-after-ms header of error replies that name no retry header.
        models: what GET /v1/models lists (the loop checks the model is served); None: no model list (404)."""
        self.models = models
        self.script = list(script)
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.retry_after_ms = retry_after_ms
        super().__init__()

    @property
    def url(self) -> str:
        return f"{self.address}/v1"

    def all_requests_text(self) -> str:
        return "\n".join(json.dumps(request) for request in self.requests)

    def _reply_for(self, body: dict) -> tuple[int, dict, str]:
        with self._lock:
            if not self.script:
                return 400, {}, json.dumps(error(400, "fake server: no scripted reply left")["body"])
            reply = self.script.pop(0)
        if "delay" in reply:  # a slow model: {"delay": seconds, "reply": the reply}
            time.sleep(reply["delay"])
            reply = reply["reply"]
        if "raw" in reply:
            return reply["status"], {"content-type": reply["content_type"]}, reply["raw"]
        if "body" in reply:
            headers = reply["headers"] or {"retry-after-ms": str(self.retry_after_ms)}
            return reply["status"], headers, json.dumps(reply["body"])
        return 200, {}, json.dumps({**reply, "model": reply["model"] or body.get("model", "")})

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.split("?")[0] != "/v1/models" or fake.models is None:
                    return self._send(404, {}, json.dumps(error(404, f"no route {self.path}")["body"]))
                listed = [{"id": model, "object": "model", "created": 0, "owned_by": "fake"} for model in fake.models]
                self._send(200, {}, json.dumps({"object": "list", "data": listed}))

            def do_POST(self):
                raw_body = self.rfile.read(int(self.headers.get("content-length", 0))).decode("utf-8")
                if self.path.split("?")[0] != "/v1/chat/completions":
                    return self._send(404, {}, json.dumps(error(404, f"no route {self.path}")["body"]))
                body = json.loads(raw_body)
                with fake._lock:
                    fake.requests.append(body)
                    fake.headers.append({name.lower(): value for name, value in self.headers.items()})
                self._send(*fake._reply_for(body))

            def _send(self, status: int, headers: dict, payload: str) -> None:
                data = payload.encode("utf-8")
                self.send_response(status)
                if "content-type" not in headers:
                    self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

        return Handler
