"""What code a run ran: MLflow's standard source tags (the UI's Source and Created by
columns), the git commit with whether the tree had uncommitted changes, and our version.

A job run from a git checkout reads git itself. A job submitted to a Ray cluster runs from an
uploaded copy of the working directory without ``.git`` (jobs/submit.py leaves it out), so the
submitter reads git on its side and hands the answers over in ``MXTRAIN_GIT_*`` variables
(:func:`submit_env`), which win when they are set.
"""

from __future__ import annotations

import getpass
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from pipeline.tracking.names import TAG_BRANCH, TAG_COMMIT, TAG_DIRTY, TAG_REPO_URL, TAG_VERSION

REPO = Path(__file__).resolve().parents[2]

ENV_COMMIT = "MXTRAIN_GIT_COMMIT"
ENV_DIRTY = "MXTRAIN_GIT_DIRTY"
ENV_BRANCH = "MXTRAIN_GIT_BRANCH"
ENV_REPO_URL = "MXTRAIN_GIT_REPO_URL"
#: git_state()'s keys -> the variables that carry them to a submitted job.
ENV_NAMES = {
    "commit": ENV_COMMIT,
    "dirty": ENV_DIRTY,
    "branch": ENV_BRANCH,
    "repo_url": ENV_REPO_URL,
}


def _git(*args: str, cwd: Path = REPO) -> str | None:
    """A git command's output in ``cwd``, or None (no git, not a checkout, any failure)."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def without_userinfo(url: str) -> str:
    """A remote's URL without ``user:token@``: a clone URL may carry a token."""
    return re.sub(r"(?<=://)[^/@\s]*@", "", url)


def git_state(cwd: Path = REPO) -> dict[str, str]:
    """commit, dirty ("true"/"false"), branch, repo_url of the checkout at ``cwd``; empty when
    it is not one (or git is missing)."""
    commit = _git("rev-parse", "HEAD", cwd=cwd)
    if not commit:
        return {}
    # Tracked files only: data/, runs/ and the like are ignored, a stray new file is not code.
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    state = {"commit": commit, "dirty": "true" if status else "false"}
    branch = _git("rev-parse", "--abbrev-ref", "HEAD", cwd=cwd)
    if branch and branch != "HEAD":
        state["branch"] = branch
    remote = _git("remote", "get-url", "origin", cwd=cwd)
    if remote:
        state["repo_url"] = without_userinfo(remote)
    return state


def submit_env(cwd: Path = REPO) -> dict[str, str]:
    """The submitter's git state as ``MXTRAIN_GIT_*`` variables for a submitted job."""
    return {ENV_NAMES[key]: value for key, value in git_state(cwd).items()}


def _handed_over() -> dict[str, str]:
    return {key: os.environ[name] for key, name in ENV_NAMES.items() if os.environ.get(name)}


def version() -> str:
    try:
        return metadata.version("mxtrain")
    except metadata.PackageNotFoundError:  # run from a copy that was never installed
        return "unknown"


def source_tags(entry_point: str) -> dict[str, str]:
    """The run's code tags; ``entry_point`` is the job's module (``jobs.train``)."""
    git = _handed_over() or git_state()
    tags = {
        "mlflow.source.name": entry_point,
        # A job the Ray Jobs API runs (jobs.submit, `ray job submit`) is MLflow's JOB: Ray
        # sets this variable for the drivers it starts.
        "mlflow.source.type": "JOB" if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") else "LOCAL",
        "mlflow.user": _user(),
        TAG_VERSION: version(),
    }
    if git.get("commit"):
        tags[TAG_COMMIT] = git["commit"]
        tags[TAG_DIRTY] = git.get("dirty", "unknown")
    if git.get("branch"):
        tags[TAG_BRANCH] = git["branch"]
    if git.get("repo_url"):
        tags[TAG_REPO_URL] = without_userinfo(git["repo_url"])
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


def entry_point() -> str:
    """The running job's module (``python -m jobs.train`` -> ``jobs.train``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None and spec.name else Path(sys.argv[0]).name or "python"
