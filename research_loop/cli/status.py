"""`agent_loop.py status`: is a loop running, what is it training now and for how long, where the night stands."""

from __future__ import annotations

import time
from pathlib import Path

from research_loop.night.folders import Workspace, latest_tag, read_json
from research_loop.night.lock import running_loop
from research_loop.records.current_state import baseline_record, best_record, score_text
from research_loop.records.ledger import read_records
from research_loop.records.run_record import Status


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


def describe_status(repo: Path, tag: str | None = None) -> list[str]:
    repo = Path(repo).resolve()
    holder = running_loop(repo)
    running = {"run": "a loop is running", "calibrate": "calibrate is running (no loop)",
               "export": "export is retraining a run (no loop)"}
    lines = [f"{running.get(holder[2], holder[2] + ' is running')} (pid {holder[1]}, night {holder[0]})" if holder
             else "no loop is running"]
    tag = tag or (holder[0] if holder else latest_tag(repo))
    if tag is None:
        return [*lines, "no night yet (start one with `python agent_loop.py`)"]
    ws = Workspace(repo, tag)
    if holder and holder[0] == tag and holder[2] == "run":
        live = read_json(ws.tag_dir / "live.json")
        now = time.time()
        if live.get("stopping"):
            lines.append(live["stopping"])
        for job in live.get("jobs", []):
            lines.append(f"training: {job['what']}, for {_duration(now - job['started'])}")
        if live and not live.get("jobs"):
            lines.append(f"now: {live.get('activity', '?')}")
        if live.get("queued"):
            lines.append(f"queued: {live['queued']} proposal(s)")
        if live.get("utilisation"):
            lines.append(f"workers busy: {live['utilisation']}")
    try:
        records = read_records(ws.results_file(), tag)
    except ValueError as exc:
        return [*lines, f"night {tag}: {exc}"]
    if not records:
        return [*lines, f"night {tag}: no runs yet"]
    counts = {status: sum(record.status is status for record in records) for status in Status}
    lines.append(f"night {tag} ({ws.results_file().relative_to(repo)}): {len(records)} runs; "
                 + ", ".join(f"{count} {status}" for status, count in counts.items() if count))
    unit = "fold" if ws.night().get("eval") == "cv" else "seed"
    best, baseline = best_record(records), baseline_record(records)
    if best is not None:
        gain = ""
        if baseline is not None and best is not baseline and best.strict_f1 is not None:
            gain = f" ({best.strict_f1 - baseline.strict_f1:+.4f} over the baseline)"
        lines.append(f"best: run {best.run} strict F1 {score_text(best, unit)}{gain}, commit {best.commit[:10]}")
    last = records[-1]
    lines.append(f"last: run {last.run} {last.status} [{last.direction or '-'}] at {last.timestamp}"
                 + (f": {last.note}" if last.note else ""))
    known = [record.cost_usd for record in records if record.cost_usd is not None]
    unpriced = " (some calls not priced)" if len(known) < len(records) else ""
    lines.append(f"agent cost so far: ${sum(known):.2f}{unpriced}")
    stop = ws.last_stop()
    if not holder and stop:
        lines.append(f"last session: {stop.get('stop_reason')}" + ("" if stop.get("finished") else
                                                                  "; `python agent_loop.py` resumes it"))
    return lines
