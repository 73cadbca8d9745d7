"""Where the shared upstream reference cases are: `../shared/reference/` beside the clone.

A git worktree (as the helpers' /work/wt/NAME) sits elsewhere than its main checkout, so when
the worktree has no ../shared beside it, the one beside the main checkout (found through the
worktree's `.git` file) is used. Tests skip only when neither exists.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def reference(name: str) -> Path:
    """The folder of one reference case (it may not exist: callers skip then)."""
    candidates = [ROOT.parent / "shared/reference" / name]
    git = ROOT / ".git"
    if git.is_file():  # "gitdir: MAIN/.git/worktrees/NAME"
        text = git.read_text().strip()
        if text.startswith("gitdir:"):
            gitdir = Path(text.split(":", 1)[1].strip())
            if gitdir.parent.name == "worktrees":
                candidates.append(gitdir.parents[2].parent / "shared/reference" / name)
    for path in candidates:
        if path.is_dir():
            return path
    return candidates[0]
