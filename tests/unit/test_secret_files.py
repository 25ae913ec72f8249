"""Secret files (Ray's token, the local cluster's token, the MLflow server's passwords, the
object store's keys) are their owner's alone and never written through a planted link."""

from __future__ import annotations

import os
import stat

import pytest

from pipeline.distributed.ray_runtime import private_ray_token
from pipeline.errors import ConfigError
from pipeline.secret_files import ensure_private, write_private


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_link_planted_where_a_secret_goes_is_replaced_not_followed(tmp_path):
    target = tmp_path / "planter-reads-this"
    target.write_text("")
    token = tmp_path / "cluster" / "auth_token"
    token.parent.mkdir()
    token.symlink_to(target)
    write_private(token, "s3cret")
    assert target.read_text() == ""  # nothing went through the link
    assert not token.is_symlink() and token.read_text() == "s3cret" and _mode(token) == 0o600
    with pytest.raises(ConfigError, match="must be a plain file, not a link"):
        token.unlink()
        token.symlink_to(target)
        ensure_private(token, lambda: "new")


def test_a_local_rays_token_is_made_or_tightened_to_0600(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    private_ray_token()
    token = tmp_path / ".ray" / "auth_token"
    assert _mode(token) == 0o600 and len(token.read_text()) == 64
    # One that Ray wrote earlier with the umask's mode keeps its value and loses its readers.
    token.chmod(0o644)
    before = token.read_text()
    private_ray_token()
    assert _mode(token) == 0o600 and token.read_text() == before
    # A token given in the environment is Ray's to use; no file is made.
    monkeypatch.setenv("HOME", str(tmp_path / "other"))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "given")
    private_ray_token()
    assert not (tmp_path / "other" / ".ray").exists()
