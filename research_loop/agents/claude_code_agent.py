"""`--agent claude-code`: Claude through the Claude Code CLI (claude-agent-sdk bundles it), with whatever
login the user's Claude Code already has.

Claude Code runs its own agent loop; this module confines it to our three tools. They are in-process SDK
tools (an SDK MCP server) calling the shared ToolSession; every built-in tool is switched off and disallowed,
allowed_tools names only ours, the permission mode denies whatever is not pre-approved and can_use_tool
denies the rest. No user or project settings are loaded (no CLAUDE.md, no hooks, no plugins or skills),
the working directory is an empty scratch folder made for the proposal and removed after, and prompts are
delivered verbatim (an @path in train.py or a log is never expanded). The CLI enforces the turn limit and
the cost cap; the nudge and the unchanged-submit rule are ours. Tokens and dollars come from its result.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from . import prompt
from .base import AgentError, Context, Proposal, Usage
from .conversation import retryable_status
from .tools import MAX_VIEW_CHARS, TOOL_SPECS, ToolSession

SERVER = "ner"  # the SDK MCP server's name; Claude Code calls our tools mcp__ner__<tool>
TOOL_NAMES = [f"mcp__{SERVER}__{spec['name']}" for spec in TOOL_SPECS]
# Claude Code's built-in tools, all disallowed (they are also switched off with tools=[]); a name a given
# CLI version does not know is ignored.
BUILTIN_TOOLS = (
    "Agent",
    "AskUserQuestion",
    "Bash",
    "BashOutput",
    "Edit",
    "ExitPlanMode",
    "Glob",
    "Grep",
    "KillBash",
    "KillShell",
    "LS",
    "ListMcpResourcesTool",
    "Monitor",
    "MultiEdit",
    "NotebookEdit",
    "NotebookRead",
    "Read",
    "ReadMcpResourceTool",
    "Skill",
    "SlashCommand",
    "Task",
    "TodoWrite",
    "WebFetch",
    "WebSearch",
    "Write",
)
TOOL_NAMES_NOTE = "In this session the tools are named " + ", ".join(TOOL_NAMES) + "."
INSTALL_HINT = 'claude-agent-sdk is not installed: pip install -e ".[claude-code]"'
# The CLI puts a longer tool result in a file and shows a preview; our model has no tool to read that file.
MAX_TOOL_RESULT_CHARS = MAX_VIEW_CHARS + 10_000
ENDED = "error: this proposal has ended (train.py was submitted unchanged twice); stop now"
NOT_RETRYABLE_ERRORS = {"authentication_failed", "billing_error", "invalid_request"}  # AssistantMessage.error


def load_sdk():
    """claude_agent_sdk, imported only when this agent is used (an optional dependency)."""
    try:
        import claude_agent_sdk
    except ImportError as err:
        raise AgentError(INSTALL_HINT, retryable=False) from err
    return claude_agent_sdk


class Tally:
    """What one proposal's messages said: the API calls seen, the latest result, the last API error."""

    def __init__(self, sdk):
        self.sdk = sdk
        self.message_ids: set[str] = set()
        self.assistant_messages = 0
        self.result = None  # the latest ResultMessage; its cost and model usage are running totals
        self.api_error: str | None = None

    def see(self, message) -> None:
        if isinstance(message, self.sdk.AssistantMessage) and message.parent_tool_use_id is None:
            self.assistant_messages += 1
            if message.message_id:  # the CLI sends one message per content block, under one id
                self.message_ids.add(message.message_id)
            self.api_error = message.error or self.api_error
        elif isinstance(message, self.sdk.ResultMessage):
            self.result = message

    def usage(self) -> Usage:
        """Tokens from the latest result's modelUsage (running totals; its `usage` is per turn), and its
        total_cost_usd; with no result, $0 when no call was seen and unknown otherwise."""
        calls = len(self.message_ids) or self.assistant_messages
        if self.result is None:
            return Usage(calls=calls, cost_usd=0.0 if calls == 0 else None)
        per_model = list((self.result.model_usage or {}).values())
        if not per_model and self.result.usage:  # an older CLI: the last turn's usage, snake_case
            usage = self.result.usage
            per_model = [
                {
                    "inputTokens": usage.get("input_tokens", 0),
                    "outputTokens": usage.get("output_tokens", 0),
                    "cacheReadInputTokens": usage.get("cache_read_input_tokens", 0),
                    "cacheCreationInputTokens": usage.get("cache_creation_input_tokens", 0),
                }
            ]
        return Usage(
            input_tokens=sum(entry.get("inputTokens", 0) or 0 for entry in per_model),
            output_tokens=sum(entry.get("outputTokens", 0) or 0 for entry in per_model),
            cache_read_tokens=sum(entry.get("cacheReadInputTokens", 0) or 0 for entry in per_model),
            cache_write_tokens=sum(entry.get("cacheCreationInputTokens", 0) or 0 for entry in per_model),
            cost_usd=self.result.total_cost_usd,
            calls=calls,
        )


class ClaudeCodeAgent:
    """Proposes train.py changes through the Claude Code CLI, confined to the three tools."""

    name = "claude-code"

    def __init__(
        self,
        model: str | None = None,
        repo: Path = Path("."),
        *,
        max_turns: int = 12,
        max_cost_usd_per_proposal: float = 2.0,
        timeout_s: float = 1800.0,
        transport_factory: Callable[[Any], Any] | None = None,
    ):
        self.sdk = load_sdk()
        self.model = model  # None: Claude Code's own default model
        self.repo = Path(repo)
        self.max_turns = max_turns
        self.max_cost_usd_per_proposal = max_cost_usd_per_proposal
        self.timeout_s = timeout_s  # a CLI that hangs must not hang the night
        self.transport_factory = transport_factory  # options -> Transport; None: the CLI as a subprocess

    def check(self) -> None:
        """Before the night: a Claude Code login exists (an API key, an OAuth token or the CLI's stored
        credentials). A transport given by the caller brings its own."""
        if self.transport_factory is not None:
            return
        if os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("CLAUDE_CODE_OAUTH_TOKEN"):
            return
        config_dir = Path(os.environ.get("CLAUDE_CONFIG_DIR") or Path.home() / ".claude")
        if (config_dir / ".credentials.json").is_file():
            return
        raise AgentError(f"--agent claude-code: no Claude Code login (no ANTHROPIC_API_KEY, no "
                         f"CLAUDE_CODE_OAUTH_TOKEN, no {config_dir / '.credentials.json'}); run `claude` once to "
                         "log in, or use --agent anthropic", retryable=False)

    def propose(self, context: Context) -> Proposal:
        """One fresh Claude Code session that ends in a submitted train.py, or an AgentError with `.usage`."""
        session = ToolSession(context.repo, context.train_py, context.last_log_path)
        tally = Tally(self.sdk)
        try:
            proposal = anyio.run(self._session, context, session, tally)
        except AgentError as err:
            err.usage = tally.usage()
            raise
        except Exception as err:  # the SDK's errors, a timeout, a bug: never a bare traceback for the loop
            error = self._agent_error(err)
            error.usage = tally.usage()
            raise error from err
        proposal.usage = tally.usage()
        return proposal

    def options(self, session: ToolSession, scratch: str, program_md: str):
        """The ClaudeAgentOptions of one proposal: only our tools, no settings, an empty scratch cwd."""
        sdk = self.sdk
        return sdk.ClaudeAgentOptions(
            model=self.model,
            system_prompt=prompt.system_prompt(program_md) + "\n\n" + TOOL_NAMES_NOTE,
            tools=[],  # no built-in tools at all
            disallowed_tools=list(BUILTIN_TOOLS),
            allowed_tools=list(TOOL_NAMES),
            mcp_servers={SERVER: sdk.create_sdk_mcp_server(SERVER, tools=self._tools(session))},
            strict_mcp_config=True,  # no MCP servers from the user's or a project's configuration
            permission_mode="dontAsk",  # whatever allowed_tools does not pre-approve is denied
            can_use_tool=self._deny_all_but_ours,
            setting_sources=[],  # no user/project/local settings: no CLAUDE.md, hooks or permission rules
            skills=[],
            cwd=scratch,
            max_turns=self.max_turns,
            max_budget_usd=self.max_cost_usd_per_proposal,
            verbatim_prompts=True,
            # no transcript or auto-memory of each scratch folder left in the user's ~/.claude
            extra_args={"no-session-persistence": None},
            env={"CLAUDE_CODE_DISABLE_AUTO_MEMORY": "1"},
        )

    # ----- one session -----

    async def _session(self, context: Context, session: ToolSession, tally: Tally) -> Proposal:
        with tempfile.TemporaryDirectory(prefix="ner-autoresearch-claude-code-") as scratch:
            options = self.options(session, scratch, context.program_md)
            transport = self.transport_factory(options) if self.transport_factory else None
            client = self.sdk.ClaudeSDKClient(options=options, transport=transport)
            with anyio.fail_after(self.timeout_s):
                try:
                    with warnings.catch_warnings():  # can_use_tool is meant for tools outside allowed_tools
                        warnings.simplefilter("ignore", self.sdk.CanUseToolShadowedWarning)
                        await client.connect()
                    return await self._turns(client, context, session, tally)
                finally:
                    await client.disconnect()

    async def _turns(self, client, context: Context, session: ToolSession, tally: Tally) -> Proposal:
        """The first message, and one nudge when the model stops without submitting."""
        await client.query(prompt.first_message(context))
        await self._one_turn(client, session, tally)
        proposal = self._outcome(session, tally)
        if proposal is None:
            await client.query(prompt.NUDGE)
            await self._one_turn(client, session, tally)
            proposal = self._outcome(session, tally)
        if proposal is None:
            raise AgentError("the model stopped twice without calling submit")
        return proposal

    async def _one_turn(self, client, session: ToolSession, tally: Tally) -> None:
        """Read messages until the turn's result; a second unchanged submit interrupts the turn."""
        interrupted = False
        async for message in client.receive_response():
            tally.see(message)
            if session.unchanged_submits >= 2 and not interrupted:
                interrupted = True
                await client.interrupt()

    def _outcome(self, session: ToolSession, tally: Tally) -> Proposal | None:
        """After a turn: the proposal when submitted, an AgentError when the turn failed, None when the
        model just stopped."""
        if session.submission is not None:
            return Proposal(
                train_py=session.train_py,
                hypothesis=session.submission.hypothesis,
                direction=session.submission.direction,
            )
        if session.unchanged_submits >= 2:
            raise AgentError("the model submitted train.py unchanged twice")
        self._check_result(tally)
        return None

    def _check_result(self, tally: Tally) -> None:
        """An error result, or a cost past the cap, as an AgentError."""
        result = tally.result
        usage = tally.usage()
        if usage.cost_usd is not None and usage.cost_usd > self.max_cost_usd_per_proposal:
            raise AgentError(
                f"proposal cost ${usage.cost_usd:.2f} passed the cap of ${self.max_cost_usd_per_proposal:.2f}"
            )
        if result is None or not result.is_error:
            return
        if result.subtype == "error_max_turns":
            raise AgentError(f"no submit after {self.max_turns} turns")
        if result.subtype == "error_max_budget_usd":
            raise AgentError(f"the proposal passed the cost cap of ${self.max_cost_usd_per_proposal:.2f}")
        detail = "; ".join(result.errors or []) or (result.result or result.subtype).strip()
        raise self._api_error(result.api_error_status, detail, tally.api_error)

    # ----- tools and permissions -----

    def _tools(self, session: ToolSession) -> list:
        """Our three tools as in-process SDK tools, each one running the shared ToolSession."""
        annotations = self.sdk.ToolAnnotations(maxResultSizeChars=MAX_TOOL_RESULT_CHARS)

        def sdk_tool(spec: dict):
            async def run(arguments: dict) -> dict:
                if session.unchanged_submits >= 2:  # the proposal has failed; the CLI may not stop at once
                    return {"content": [{"type": "text", "text": ENDED}], "is_error": True}
                result = session.call(spec["name"], arguments)
                return {"content": [{"type": "text", "text": result.content}], "is_error": result.is_error}

            return self.sdk.tool(spec["name"], spec["description"], spec["input_schema"], annotations)(run)

        return [sdk_tool(spec) for spec in TOOL_SPECS]

    async def _deny_all_but_ours(self, tool_name: str, tool_input: dict, context):
        if tool_name in TOOL_NAMES:
            return self.sdk.PermissionResultAllow()
        return self.sdk.PermissionResultDeny(
            message=f"{tool_name} is not available here; the only tools are view_file, edit_train and submit"
        )

    # ----- errors -----

    def _api_error(self, status: int | None, detail: str, api_error: str | None) -> AgentError:
        """An API failure the CLI reported (after its own retries), by HTTP status or error kind."""
        detail = " ".join(detail.split())[:300]
        if status in (401, 403) or api_error == "authentication_failed":
            return AgentError(
                f"Claude Code could not log in ({status or api_error}: {detail}); run `claude` and /login",
                retryable=False,
            )
        if (status is not None and not retryable_status(status)) or api_error in NOT_RETRYABLE_ERRORS:
            return AgentError(
                f"the Claude API refused the request via Claude Code ({status or api_error}: {detail})",
                retryable=False,
            )
        return AgentError(f"Claude Code failed ({status or api_error or 'error'}: {detail})")

    def _agent_error(self, err: Exception) -> AgentError:
        sdk = self.sdk
        if isinstance(err, sdk.CLINotFoundError):
            return AgentError(
                f"the Claude Code CLI was not found ({err}); reinstall claude-agent-sdk", retryable=False
            )
        if isinstance(err, sdk.ResultError):
            return self._api_error(
                err.api_error_status, err.result or "; ".join(err.errors) or str(err), None
            )
        if isinstance(err, TimeoutError):
            return AgentError(f"Claude Code did not finish the proposal within {self.timeout_s:.0f} s")
        if isinstance(err, sdk.ClaudeSDKError):  # the CLI crashed, or its output could not be read
            first_line = (str(err).splitlines() or [""])[0]
            return AgentError(f"Claude Code failed ({type(err).__name__}: {first_line})")
        return AgentError(f"claude-code: unexpected {type(err).__name__}: {err}")
