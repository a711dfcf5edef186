"""Git for the loop, through GitPython, hardened: hooks and fsmonitor off, no system or global config, every
git process in its own session (the terminal's Ctrl-C never reaches it).

The branch autoresearch/<tag> holds the baseline and the kept commits only. A candidate is committed off the
branch (parent: the best it was based on), kept reachable under refs/autoresearch/<tag>/run-N, and the branch
moves to it only when it is kept, so a discard needs no git step at all.
"""

from __future__ import annotations

import difflib
import io
from pathlib import Path

import git
from git.index.typ import BaseIndexEntry
from git.objects import Commit
from gitdb import IStream

TRAIN_FILE = "train.py"
# The loop's own files: never a reason to refuse a dirty tree, never committed.
RUNTIME_PATHS = ("results.tsv", "CURRENT_STATE.md", "runs/", "STOP", "progress.png", "data/", "exports/", "mlruns/")
RUN_TRAILER = "Autoresearch-Run"  # the trailer naming the run a commit keeps
FALLBACK_IDENTITY = ("ner-autoresearch", "ner-autoresearch@localhost")


class GitError(Exception):
    """A one-line, user-facing problem with the repository (not a repo, no commits, foreign commits)."""


BRANCH_PREFIX = "autoresearch/"  # a night's branch: autoresearch/<tag>


def branch_name(tag: str) -> str:
    return f"{BRANCH_PREFIX}{tag}"


def run_ref(tag: str, run: int) -> str:
    """The ref that keeps candidate `run` reachable (for a later export)."""
    return f"refs/autoresearch/{tag}/run-{run}"


def is_runtime_path(path: str) -> bool:
    return any(path == prefix.rstrip("/") or (prefix.endswith("/") and path.startswith(prefix))
               for prefix in RUNTIME_PATHS)


class SafeGit(git.Git):
    """Every git process in a new session, so a Ctrl-C sent to the terminal's process group cannot kill it
    (and break the loop's next git step with a broken pipe)."""

    def execute(self, command, *args, **kwargs):
        kwargs.setdefault("start_new_session", True)
        return super().execute(command, *args, **kwargs)


class SafeRepo(git.Repo):
    GitCommandWrapperType = SafeGit


def unified_diff(before: str, after: str, name: str = TRAIN_FILE) -> str:
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        f"a/{name}", f"b/{name}"))


class Git:
    """The repository the loop works in; every method is one small git step."""

    def __init__(self, repo: Path, private_dir: Path | None = None):
        try:
            self.repo = SafeRepo(repo)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise GitError(f"{repo}: not a git repository (run `git init` and commit the project first)") from None
        if self.repo.bare or not self.repo.head.is_valid():
            raise GitError(f"{repo}: the repository has no commits yet; commit the project first")
        self.root = Path(self.repo.working_tree_dir)
        self.name, self.email = self._identity()
        self._harden(private_dir)

    def _identity(self) -> tuple[str, str]:
        """The user's name and email, read by GitPython's own config parser (nothing runs)."""
        reader = self.repo.config_reader()
        if reader.has_option("user", "name") and reader.has_option("user", "email"):
            return reader.get_value("user", "name"), reader.get_value("user", "email")
        return FALLBACK_IDENTITY

    def _harden(self, private_dir: Path | None) -> None:
        private = Path(private_dir) if private_dir else self.root / ".git" / "ner-autoresearch"
        hooks = private / "no-hooks"
        hooks.mkdir(parents=True, exist_ok=True)
        config = private / "gitconfig"
        if not config.exists():
            config.write_text("")
        self.repo.git.update_environment(
            GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=str(config), GIT_TERMINAL_PROMPT="0", GIT_ATTR_NOSYSTEM="1",
            GIT_AUTHOR_NAME=self.name, GIT_AUTHOR_EMAIL=self.email, GIT_COMMITTER_NAME=self.name,
            GIT_COMMITTER_EMAIL=self.email)
        self.repo.git.set_persistent_git_options(c=[
            f"core.hooksPath={hooks}", "core.fsmonitor=false", "core.untrackedCache=false", "core.pager=cat",
            "core.attributesFile=/dev/null", "diff.external=", "core.sshCommand=false", "credential.helper="])

    # ----- Status -----

    def changed_paths(self) -> set[str]:
        """Tracked files with uncommitted changes (staged or not), runtime files left out."""
        paths = {item.a_path for item in self.repo.index.diff(None)}  # working tree against the index
        paths |= {item.a_path for item in self.repo.index.diff("HEAD")}  # index against HEAD
        return {path for path in paths if not is_runtime_path(path)}

    def untracked_paths(self) -> set[str]:
        return {path for path in self.repo.untracked_files if not is_runtime_path(path)}

    def current_branch(self) -> str | None:
        return None if self.repo.head.is_detached else self.repo.active_branch.name

    def head_sha(self) -> str:
        return self.repo.head.commit.hexsha

    def run_of(self, commit: str) -> int | None:
        """The run number of a commit the loop made (its trailer), else None."""
        values = self.repo.commit(commit).trailers_dict.get(RUN_TRAILER, [])
        return int(values[-1]) if values and values[-1].isdigit() else None

    def show(self, commit: str, path: str = TRAIN_FILE) -> str:
        return self.show_bytes(commit, path).decode("utf-8")

    def show_bytes(self, commit: str, path: str) -> bytes:
        return self.repo.commit(commit).tree[path].data_stream.read()

    def message(self, commit: str) -> str:
        return self.repo.commit(commit).message

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return self.repo.is_ancestor(ancestor, descendant)

    def exists(self, commit: str) -> bool:
        """Whether the object database holds this commit (GitPython resolves a full sha without looking)."""
        try:
            sha = self.repo.commit(commit).hexsha
            return self.repo.odb.has_object(bytes.fromhex(sha))
        except (ValueError, git.BadName):
            return False

    # ----- Branch -----

    def use_branch(self, tag: str, base: str | None = None) -> bool:
        """Check out autoresearch/<tag>, creating it at base (default HEAD) when new. True when it already
        existed."""
        name = branch_name(tag)
        try:
            self.repo.git.check_ref_format("--branch", name)
        except git.GitCommandError:
            raise GitError(f"--tag {tag!r}: not a valid git branch name part") from None
        existed = name in self.repo.heads
        if self.current_branch() != name:
            (self.repo.heads[name] if existed else self.repo.create_head(name, base or "HEAD")).checkout()
        return existed

    # ----- Commits -----

    def commit_train(self, base: str, train_py: str, message: str) -> str:
        """A commit whose tree is base's with train.py replaced, parent base; no branch or file moves."""
        data = train_py.encode("utf-8")
        blob = self.repo.odb.store(IStream("blob", len(data), io.BytesIO(data)))
        index = git.IndexFile.from_tree(self.repo, base)
        mode = index.entries[(TRAIN_FILE, 0)].mode if (TRAIN_FILE, 0) in index.entries else 0o100644
        index.add([BaseIndexEntry((mode, blob.binsha, 0, TRAIN_FILE))], write=False)
        tree = index.write_tree()
        actor = git.Actor(self.name, self.email)
        commit = Commit.create_from_tree(self.repo, tree, message, parent_commits=[self.repo.commit(base)],
                                         head=False, author=actor, committer=actor)
        return commit.hexsha

    def mark_run(self, tag: str, run: int, sha: str) -> None:
        self.repo.git.update_ref(run_ref(tag, run), sha)

    def run_refs(self, tag: str) -> dict[int, str]:
        """run number -> commit of every candidate ref of the tag."""
        found = {}
        prefix = f"refs/autoresearch/{tag}/run-"
        for ref in self.repo.refs:
            if ref.path.startswith(prefix) and ref.path[len(prefix):].isdigit():
                found[int(ref.path[len(prefix):])] = ref.commit.hexsha
        return found

    def move_to(self, commit: str) -> None:
        """Point the branch at commit and bring train.py in the index and working tree along; any other
        working-tree change (a human's program.md edit) is left alone."""
        if self.head_sha() != commit:
            self.repo.head.reset(commit, index=True, working_tree=False)
        self.repo.git.checkout(commit, "--", TRAIN_FILE)

    def restore_tracked(self, commit: str, path: str) -> bool:
        try:
            self.repo.git.checkout(commit, "--", path)
            return True
        except git.GitCommandError:
            return False

    def merge_train(self, base_text: str, ours: str, theirs: str) -> str | None:
        """theirs' change (base_text -> theirs) applied to ours with a three-way merge; None on a conflict."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="ner-autoresearch-merge-") as folder:
            paths = []
            for name, text in (("ours", ours), ("base", base_text), ("theirs", theirs)):
                path = Path(folder) / name
                path.write_text(text, encoding="utf-8")
                paths.append(str(path))
            try:
                merged = self.repo.git.merge_file("-p", "-q", *paths)
            except git.GitCommandError:
                return None  # conflicts: merge-file exits with their count
        return merged + "\n" if ours.endswith("\n") and not merged.endswith("\n") else merged
