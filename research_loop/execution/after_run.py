"""After every run: did anything outside its out/ folder change? Protected files come back from the loop's
copies, the rest of the working tree from git or aside into the run's tampered/ folder. In a sandbox
train.py cannot have done it (the change is reported, e.g. a human's edit); without one, the run is invalid."""

from __future__ import annotations

from research_loop.night.session import Session
from research_loop.records.integrity import PROTECTED_FILES, listed

FIXED = tuple(name for name in PROTECTED_FILES if name != "program.md")  # program.md: the human may edit it


def check_after_run(session: Session, run: int) -> tuple[str | None, str | None]:
    """(the run's note when train.py may have done it, else None; a reason to stop the night, else None)."""
    files = session.files
    if files.backend != "none":
        files.protected.accept("program.md")  # train.py cannot reach it: a change is the human's
    violations = files.protected.violations()
    changes = [change for change in files.tree.changes()
               if not change.path.startswith(("data/", "research_loop/")) and change.path not in FIXED]
    if not violations and not changes:
        return None, None
    saved = session.ws.run_dir(run) / "tampered"
    left = files.protected.restore(violations, saved)
    left = [path for path in left if not files.git.restore_tracked("HEAD", path)]
    left += files.tree.undo(changes, saved, lambda path: files.git.restore_tracked("HEAD", path))
    what = listed(violations + changes)
    session.progress.note(f"run {run}: files outside its out/ folder changed and were restored or moved to "
                          f"{saved.relative_to(session.ws.repo)}: {what}"
                          + (f"; could not restore {', '.join(left)}" if left else ""))
    stop = None
    if left and any(path.startswith("data/") for path in left):
        stop = f"error: {left[0]} could not be restored; run prepare.py again"
    if files.backend == "none" or violations:
        return f"train.py changed protected files: {what} (restored)", stop
    return None, stop
