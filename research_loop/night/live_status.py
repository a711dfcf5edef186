"""What the night is doing now: the live panel's lines, runs/<tag>/live.json for `agent_loop.py status`,
and the in-flight list the agent sees (so it does not propose the same change twice)."""

from __future__ import annotations

import json
import os
import time

from research_loop.evaluation.trial import Trial
from research_loop.night.session import Session
from research_loop.safe_io import write_atomically

LIVE_EVERY_S = 2.0
LIVE_FILE = "live.json"


def in_flight_lines(session: Session, queue: list[Trial]) -> list[str]:
    lines = []
    for trial in queue:
        if trial.candidate.is_baseline:
            continue
        state = (f"training ({len(trial.done)} of {session.full_trials} {session.unit}s done)"
                 if trial.running or trial.done else "queued")
        lines.append(f"run {trial.candidate.run} [{trial.candidate.direction}] {trial.candidate.hypothesis} -- {state}")
    return lines


class LiveStatus:
    def __init__(self, session: Session):
        self.session = session
        self.written = 0.0
        self.stopping = ""  # "stopping after run 4 (STOP seen 02:28:28); ...", once STOP or Ctrl-C was seen

    def show(self, tickets: dict, queue: list, agent_busy: bool) -> None:
        session = self.session
        jobs = [((f"run {run} {session.unit} {ticket.fold if ticket.fold is not None else ticket.seed} on "
                 f"{ticket.worker}"), ticket.started) for (run, _), ticket in tickets.items()]
        wall = max(session.stop.hours * 3600, 1e-9)
        utilisation = ", ".join(f"{name} {seconds / wall:.0%}" for name, seconds in session.executor.busy_seconds().items())
        queued = sum(1 for trial in queue if not (trial.running or trial.done))
        session.progress.in_flight(jobs, queued, utilisation)
        if not tickets and not agent_busy:
            session.progress.doing("deciding")
        if time.monotonic() - self.written < LIVE_EVERY_S:
            return
        self.written = time.monotonic()
        now = time.time()
        live = {"pid": os.getpid(), "updated": now, "activity": session.progress.activity, "queued": queued,
                "jobs": [{"what": what, "started": now - (time.monotonic() - since)} for what, since in jobs],
                "utilisation": utilisation, "stopping": self.stopping}
        try:
            write_atomically(session.ws.tag_dir / LIVE_FILE, json.dumps(live) + "\n")
        except OSError:
            pass  # a full disk must not end the night over a status file
