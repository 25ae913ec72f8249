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
        # An unescaped "@" in the password: all of it hidden, up to the host's "@".
        ("http://u:p@ss@host/x", "http://u:***@host/x"),
        # A userinfo without ":" may be a token (https://TOKEN@host): hidden whole.
        ("https://ghp_abc123@github.com/o/r", "https://***@github.com/o/r"),
        ("'http://u:pw@h'", "'http://u:***@h'"),
        # Secret query values: passwords, tokens, presigned URLs' signatures and credentials.
        ("http://h/db?user=u&password=pw&x=1", "http://h/db?user=u&password=***&x=1"),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F&X-Amz-Signature=ab12&v=2",
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&v=2",
        ),
        (
            "https://a.blob.core.windows.net/c?sv=1&sig=s3cr3t",
            "https://a.blob.core.windows.net/c?sv=1&sig=***",
        ),
        ("http://h/?access_token=t0k", "http://h/?access_token=***"),
        ("http://h:5000/x?page=2", "http://h:5000/x?page=2"),
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
        (["--"], {"MLFLOW_TRACKING_URI": "https://hunter2@mlflow:5000"}),
        (["--", "--set", "tracking.uri=http://mlflow:5000/?token=hunter2"], {}),
    ],
)
def test_submit_refuses_to_send_a_password(args, env):
    proc = run_cli("jobs.submit", "--address", "http://127.0.0.1:9", *args, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "MLFLOW_TRACKING_PASSWORD" in lines[0], proc.stderr
    assert "hunter2" not in proc.stdout + proc.stderr
