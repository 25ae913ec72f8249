"""Files that hold a secret (a token, a password, signing keys): readable by their owner only,
and never written through a link someone else planted.

``open(path, "w")`` follows a symlink and keeps an existing file's mode: a link planted in a
shared folder sends the secret where its planter reads it, and a file once created 0644
stays world-readable. Both helpers open with ``O_NOFOLLOW`` and leave the file at mode 0600.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import ConfigError


def write_private(path: Path, text: str) -> None:
    """``text`` in a new file at ``path`` of mode 0600. Whatever was there (a file, a link)
    is removed first (the link itself, not its target); the file is created with
    ``O_EXCL | O_NOFOLLOW``, so a link planted in between is refused, never followed."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def ensure_private(path: Path, make: Callable[[], str]) -> str:
    """The secret in ``path``, created by ``make()`` when there is none; an existing file is
    tightened to mode 0600. ConfigError when ``path`` is a link or not a regular file."""
    if not os.path.lexists(path):
        write_private(path, make())
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:  # ELOOP: a symlink
        raise ConfigError(
            f"{path}: holds a secret and must be a plain file, not a link ({exc.strerror});"
            " remove it and run again"
        ) from None
    with os.fdopen(fd) as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: holds a secret and must be a plain file")
        if info.st_mode & 0o077 and info.st_uid == os.getuid():
            os.fchmod(f.fileno(), 0o600)
        return f.read().strip()
