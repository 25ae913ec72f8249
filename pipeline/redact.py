"""Credentials never shown: the secret parts of a URI are replaced before any URI is printed,
logged, put in an error message or recorded in MLflow.

A user may write a secret into a URI: a password (``http://user:password@mlflow:5000``,
``postgresql://user:p@ss@db/mlflow``), a token as the whole userinfo
(``https://TOKEN@host``), or a signed query (``?X-Amz-Signature=...``, ``?password=...``).
The tools then print, log and record that URI as given. Every place this project shows a URI
or an error text calls :func:`redact`, and :class:`~pipeline.errors.PipelineError` applies it
to every message.

A URI is cut out of free text at white space; its userinfo is everything before the *last*
``@`` of the authority (what ``urllib.parse.urlsplit`` takes as the host), so an unescaped
``@`` inside a password is hidden with the rest of it.
"""

from __future__ import annotations

import re

MASK = "***"

#: scheme://authority then the rest up to white space. The authority ends at the first
#: "/", "?" or "#" (RFC 3986), so "@"s in an unescaped password stay inside it.
_URI = re.compile(r"\b(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<authority>[^\s/?#]*)(?P<rest>\S*)")

#: Query keys whose values are secrets: passwords, tokens, signatures and credentials of
#: presigned URLs (AWS ``X-Amz-Signature``/``X-Amz-Credential``/``X-Amz-Security-Token``,
#: Google ``X-Goog-Signature``, Azure SAS ``sig``), API keys.
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;][^=&;#\s]*(?:pass|pwd|token|secret|signature|sig|credential|key|auth)"
    r"[^=&;#\s]*=)(?P<value>[^&;#\s]*)",
    re.IGNORECASE,
)


def _redact_uri(match: re.Match[str]) -> str:
    authority, rest = match["authority"], match["rest"]
    userinfo, at, host = authority.rpartition("@")
    if at:
        user, colon, _secret = userinfo.partition(":")
        # user:password -> user:***; a userinfo without ":" may be a token: all of it.
        authority = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    rest = _SECRET_QUERY.sub(lambda m: f"{m['key']}{MASK}" if m["value"] else m[0], rest)
    return f"{match['scheme']}{authority}{rest}"


def redact(text: str) -> str:
    """``text`` with the secrets of every URI in it (password, token userinfo, secret
    query values) replaced by ``***``."""
    return _URI.sub(_redact_uri, text)


def has_password(text: str) -> bool:
    """Whether ``text`` holds a URI with a secret in it (what :func:`redact` would hide)."""
    return redact(text) != text
