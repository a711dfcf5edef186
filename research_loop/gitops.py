"""Git for the loop (GitPython): the autoresearch/<tag> branch, candidate commits, reverts, run refs."""

from __future__ import annotations

import re
from pathlib import Path

import git

TRAIN_FILE = "train.py"
# The loop's own runtime files: never a reason to refuse a dirty tree, never committed.
RUNTIME_PATHS = ("results.tsv", "CURRENT_STATE.md", "runs/", "STOP", "progress.png", "data/")
RUN_TRAILER = re.compile(r"^Autoresearch-Run: (\d+)$", re.MULTILINE)
FALLBACK_IDENTITY = {  # used only when git has no user.name / user.email configured
    "GIT_AUTHOR_NAME": "ner-autoresearch", "GIT_AUTHOR_EMAIL": "ner-autoresearch@localhost",
    "GIT_COMMITTER_NAME": "ner-autoresearch", "GIT_COMMITTER_EMAIL": "ner-autoresearch@localhost",
}


class GitError(Exception):
    """A one-line, user-facing problem with the repository (not a repo, bad tag, foreign commits)."""


def branch_name(tag: str) -> str:
    return f"autoresearch/{tag}"


def run_ref(tag: str, run: int) -> str:
    """The ref that keeps candidate `run` reachable after a revert (for a later export)."""
    return f"refs/autoresearch/{tag}/run-{run}"


def is_runtime_path(path: str) -> bool:
    return any(path == prefix or (prefix.endswith("/") and path.startswith(prefix)) for prefix in RUNTIME_PATHS)


class Git:
    """The repository the loop works in; every method is one small git step."""

    def __init__(self, repo: Path):
        try:
            self.repo = git.Repo(repo)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise GitError(f"{repo}: not a git repository (run `git init` and commit the project first)") from None
        if self.repo.bare or not self.repo.head.is_valid():
            raise GitError(f"{repo}: the repository has no commits yet; commit the project first")
        self.root = Path(self.repo.working_tree_dir)

    def _git(self, *args: str) -> str:
        """Run a git command, with a fallback identity when none is configured (commits need one)."""
        reader = self.repo.config_reader()
        has_identity = reader.has_option("user", "name") and reader.has_option("user", "email")
        with self.repo.git.custom_environment(**({} if has_identity else FALLBACK_IDENTITY)):
            return self.repo.git.execute(["git", *args])

    # ----- Status -----

    def changed_paths(self) -> set[str]:
        """Tracked files with uncommitted changes (staged or not), runtime files left out."""
        paths = set()
        for line in self.repo.git.status("--porcelain", "--untracked-files=no").splitlines():
            path = line[3:].split(" -> ")[-1].strip('"')
            if not is_runtime_path(path):
                paths.add(path)
        return paths

    def untracked_paths(self) -> set[str]:
        """Untracked, non-ignored files, runtime files left out."""
        return {path for path in self.repo.untracked_files if not is_runtime_path(path)}

    def current_branch(self) -> str | None:
        return None if self.repo.head.is_detached else self.repo.active_branch.name

    def head_sha(self) -> str:
        return self.repo.head.commit.hexsha

    def head_run(self) -> int | None:
        """The run number of the commit at HEAD when the loop made it (its trailer), else None."""
        match = RUN_TRAILER.search(self.repo.head.commit.message)
        return int(match.group(1)) if match else None

    def show(self, commit: str, path: str = TRAIN_FILE) -> str:
        """A file's text at a commit (through the object database: no subprocess per call)."""
        return self.repo.commit(commit).tree[path].data_stream.read().decode("utf-8")

    def commit_message(self, commit: str) -> str:
        return self.repo.commit(commit).message

    # ----- Branch -----

    def use_branch(self, tag: str) -> bool:
        """Check out autoresearch/<tag>, creating it at HEAD when new. Returns True when it already existed."""
        name = branch_name(tag)
        try:
            self.repo.git.check_ref_format("--branch", name)
        except git.GitCommandError:
            raise GitError(f"--tag {tag!r}: not a valid git branch name part") from None
        existed = name in self.repo.heads
        if self.current_branch() != name:
            if existed:
                self.repo.heads[name].checkout()
            else:
                self.repo.create_head(name).checkout()
        return existed

    # ----- Candidate commits and reverts -----

    def commit_candidate(self, tag: str, run: int, subject: str, body: str) -> str:
        """Commit train.py alone on the branch, keep it reachable under a run ref; returns the sha."""
        message = f"{subject}\n\n{body}\n\nAutoresearch-Run: {run}\n"
        self._git("commit", "--no-verify", "--allow-empty", "-q", "-m", message, "--", TRAIN_FILE)
        sha = self.head_sha()
        self.mark_run(tag, run, sha)
        return sha

    def mark_run(self, tag: str, run: int, sha: str) -> None:
        self.repo.git.update_ref(run_ref(tag, run), sha)

    def run_ref_sha(self, tag: str, run: int) -> str | None:
        try:
            return self.repo.git.rev_parse("--verify", "-q", run_ref(tag, run))
        except git.GitCommandError:
            return None

    def move_to(self, commit: str) -> None:
        """Point the branch at commit and restore train.py from it; any other working-tree change
        (a human's program.md edit, say) is left alone, so no uncommitted work is lost."""
        if self.head_sha() != commit:
            self.repo.head.reset(commit, index=True, working_tree=False)
        self.restore_train(commit)

    def restore_train(self, commit: str) -> None:
        """train.py as it is at commit, in the index and the working tree."""
        self.repo.git.checkout(commit, "--", TRAIN_FILE)

    def restore_tracked(self, commit: str, path: str) -> None:
        self.repo.git.checkout(commit, "--", path)
