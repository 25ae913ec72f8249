"""Credentials never shown: the password part of a URI's userinfo is replaced before any URI
is printed, logged, put in an error message or recorded in MLflow.

A user may write a password into a URI (``http://user:password@mlflow:5000``,
``postgresql://user:password@db/mlflow``); the tools then print, log and record that URI as
given. Every place this project shows a URI or an error text calls :func:`redact`, and
:class:`~pipeline.errors.PipelineError` applies it to every message.
"""

from __future__ import annotations

import re

#: scheme://user:password@ -> the password, whatever characters it holds up to the "@".
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s/@:]*):(?P<secret>[^\s/@]*)@")

MASK = "***"


def redact(text: str) -> str:
    """``text`` with the password of every URI in it replaced by ``***``."""
    return _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)


def has_password(text: str) -> bool:
    """Whether ``text`` holds a URI with a password in it."""
    return _USERINFO.search(text) is not None
