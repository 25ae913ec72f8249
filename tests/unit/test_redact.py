"""A URI's password is never shown: redaction itself, every error line, and jobs.submit
refusing to send one to a cluster."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError, TrackingError
from pipeline.redact import has_password, redact
from tests.conftest import run_cli


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://u:pw@h:5000/x", "http://u:***@h:5000/x"),
        ("postgresql://u:p%40ss@db/mlflow", "postgresql://u:***@db/mlflow"),
        ("at https://a:b@c and http://d:e@f", "at https://a:***@c and http://d:***@f"),
        ("http://user@host", "http://user@host"),  # no password: nothing to hide
        ("s3://bucket/key", "s3://bucket/key"),
        ("file:///tmp/a@b", "file:///tmp/a@b"),
    ],
)
def test_redact_hides_only_passwords(text, shown):
    assert redact(text) == shown
    assert has_password(text) == (text != shown)


def test_every_user_error_line_is_redacted():
    for error in (ConfigError, TrackingError):
        assert "hunter2" not in str(error("MLflow at http://me:hunter2@host:5000 said no"))


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--", "--set", "tracking.uri=http://me:hunter2@mlflow:5000"], {}),
        (["--"], {"MLFLOW_TRACKING_URI": "http://me:hunter2@mlflow:5000"}),
    ],
)
def test_submit_refuses_to_send_a_password(args, env):
    proc = run_cli("jobs.submit", "--address", "http://127.0.0.1:9", *args, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "MLFLOW_TRACKING_PASSWORD" in lines[0], proc.stderr
    assert "hunter2" not in proc.stdout + proc.stderr
