"""From the agent's answer to a queued candidate: vet it (text, compile, duplicate, closed direction), commit
it off the branch with its run number, or log it `invalid` with the reason that goes back to the agent."""

from __future__ import annotations

from research_loop.agents.base import Proposal, Usage
from research_loop.config_block import normalised
from research_loop.evaluation.trial import Candidate
from research_loop.hygiene import MAX_TRAIN_PY_BYTES, code_problem
from research_loop.hygiene import collapse_whitespace as one_line
from research_loop.night.session import Session
from research_loop.night.stopping import Stop
from research_loop.proposals.source import Asked, ProposalSource, compile_error, text_error
from research_loop.records.current_state import direction_key
from research_loop.records.gitops import RUN_TRAILER
from research_loop.records.recorder import Recorder, crash_point
from research_loop.records.run_record import Status

MAX_DESCRIPTION = 300


def commit_message(run: int, candidate: Candidate) -> str:
    subject = f"run {run}: {one_line(candidate.direction)}: {one_line(candidate.hypothesis)[:60]}"
    cost = "unknown" if candidate.cost_usd is None else f"{candidate.cost_usd:.6f}"
    return (f"{subject}\n\nHypothesis: {one_line(candidate.hypothesis)}\nDirection: {one_line(candidate.direction)}\n"
            f"Base: {candidate.parent}\nCost-USD: {cost}\nTokens: {candidate.tokens_in}/{candidate.tokens_out}\n"
            f"Agent-Key: {one_line(candidate.key)}\n\n{RUN_TRAILER}: {run}\n")


class Intake:
    """One outstanding ask; bounces and feedback between asks."""

    def __init__(self, session: Session, recorder: Recorder, proposals: ProposalSource, max_bounces: int = 3):
        self.session, self.recorder, self.proposals = session, recorder, proposals
        self.max_bounces = max_bounces
        self.bounces = 0
        self.feedback: str | None = None
        self.carried = Usage()  # what the bounced asks of this proposal cost

    def ask(self, in_flight: list[str]) -> None:
        best = self.session.best()
        context = self.session.context(self.session.files.git.show(best.commit), self.feedback, in_flight)
        self.feedback = None
        self.session.progress.doing("agent proposing")
        self.proposals.ask(context)

    def take(self, asked: Asked, in_flight_trees: dict[str, int], in_flight: list[str]) -> Candidate | Stop | None:
        """A candidate to queue, a Stop (the agent gave up), or None (invalid, or asked again after a bounce)."""
        session = self.session
        session.budget.add_cost(asked.usage.cost_usd)
        self.carried.add(asked.usage)
        if asked.stop is not None:
            return asked.stop
        proposal = asked.proposal
        error = text_error(proposal) or compile_error(proposal.train_py)
        if error:
            self._invalid(proposal, error, save_text=True)
            return None
        bounce = self._bounce(proposal, in_flight_trees)
        if bounce is not None:
            self.bounces += 1
            if self.bounces > self.max_bounces:
                self._invalid(proposal, f"{bounce[0]} ({self.max_bounces} bounces)")
                return None
            self.feedback = f"Your proposal was sent back before any training: {bounce[1]}"
            self.ask(in_flight)
            return None
        return self._commit(proposal)

    def _usage_fields(self) -> tuple[float | None, int, int]:
        usage, self.carried = self.carried, Usage()
        self.bounces = 0
        return usage.cost_usd, usage.tokens_in, usage.output_tokens

    def _invalid(self, proposal: Proposal, note: str, save_text: bool = False) -> None:
        session = self.session
        run = session.next_run()
        if save_text:
            folder = session.ws.run_dir(run)
            folder.mkdir(parents=True, exist_ok=True)
            text = proposal.train_py if isinstance(proposal.train_py, str) else repr(proposal.train_py)
            data = text.encode("utf-8", errors="backslashreplace")
            if len(data) > MAX_TRAIN_PY_BYTES:  # a refused giant is kept only as far as the cap
                data = data[:MAX_TRAIN_PY_BYTES] + f"\n# ... cut: the proposal was {len(data):,} bytes\n".encode()
            (folder / "proposal_train.py").write_bytes(data)
        cost, tokens_in, tokens_out = self._usage_fields()
        safe = Proposal(train_py="", hypothesis=_safe_line(proposal.hypothesis), direction=_safe_line(proposal.direction))
        record = self.recorder.blank(run, Status.INVALID, note, proposal=safe)
        record.cost_usd, record.tokens_in, record.tokens_out = cost, tokens_in, tokens_out
        self.recorder.log(record, agent_key=proposal.key)
        self.feedback = f"Your previous proposal (run {run}) was not run: {note}."

    def _bounce(self, proposal: Proposal, in_flight_trees: dict[str, int]) -> tuple[str, str] | None:
        """(short note, message for the agent) for a train.py already run or in flight, or a closed direction."""
        session = self.session
        tree = normalised(proposal.train_py)
        if session.check_duplicates:
            duplicate = session.seen.get(tree)
            if duplicate is not None:
                best = session.best()
                return (f"duplicate of run {duplicate.run}",
                        (f"it is the same train.py (ignoring comments and whitespace) as run {duplicate.run} "
                        f"({duplicate.status}, strict F1 {duplicate.strict_f1 if duplicate.strict_f1 is not None else '-'}"
                        f"; best {best.strict_f1}). Propose a different change."))
            if tree in in_flight_trees:
                return (f"duplicate of run {in_flight_trees[tree]} (in flight)",
                        (f"it is the same train.py as run {in_flight_trees[tree]}, which is queued or training now. "
                        "Propose a different change."))
        closed = session.closed_directions()
        parts = {direction_key(proposal.direction), *(direction_key(part) for part in proposal.direction.split(" + "))}
        if parts & closed:
            return (f"direction {proposal.direction!r} is closed",
                    (f"the direction {proposal.direction!r} is closed: it failed {session.close_after} times in a row "
                    "without a keep (see the direction table in CURRENT_STATE.md). Choose another direction; only "
                    "the human can reopen it, in program.md."))
        return None

    def _commit(self, proposal: Proposal) -> Candidate:
        session = self.session
        best = session.best()
        cost, tokens_in, tokens_out = self._usage_fields()
        run = session.next_run()
        candidate = Candidate(run, "", proposal.train_py, best.commit, one_line(proposal.hypothesis)[:2000],
                              one_line(proposal.direction)[:80], cost, tokens_in, tokens_out, proposal.key)
        candidate.commit = session.files.git.commit_train(best.commit, proposal.train_py, commit_message(run, candidate))
        session.files.git.mark_run(session.ws.tag, run, candidate.commit)
        crash_point("after_commit", run)
        return candidate


    def rebase(self, stale: Candidate, train_py: str) -> Candidate:
        """A stale candidate's change, merged onto the new best, as a new run (its cost was logged already)."""
        session = self.session
        best = session.best()
        run = session.next_run()
        candidate = Candidate(run, "", train_py, best.commit, f"{stale.hypothesis} (rebased from run {stale.run})",
                              stale.direction, 0.0, 0, 0, stale.key)
        candidate.commit = session.files.git.commit_train(best.commit, train_py, commit_message(run, candidate))
        session.files.git.mark_run(session.ws.tag, run, candidate.commit)
        return candidate


def _safe_line(text: object) -> str:
    """A field the loop refused, made loggable: anything not plain text shown escaped."""
    if not isinstance(text, str):
        return repr(text)[:MAX_DESCRIPTION]
    if code_problem(text) or "\n" in text:
        return text.encode("unicode_escape", errors="backslashreplace").decode("ascii")[:MAX_DESCRIPTION]
    return text[:MAX_DESCRIPTION]
