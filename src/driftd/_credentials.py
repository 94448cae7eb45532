"""Credentials the config names: bearer tokens, token files, the TLS certificate and key.

The config calls these at load, so that a token too short, a token file that cannot be read or a
key that does not fit its certificate is a config error listed with the others, before the
daemon starts. They return what is wrong in words; the caller prefixes the key. Nothing here
ever puts a token into a message.
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["MIN_TOKEN_LENGTH", "read_token_file", "tls_problem", "token_problem", "unreadable"]

MIN_TOKEN_LENGTH = 16


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be a bearer token, or None.

    A header carries visible ASCII only (RFC 6750's ``b64token``): a space, a control character
    or a non-ASCII letter would never arrive as configured, so such a token could never match.
    """
    if len(token) < MIN_TOKEN_LENGTH:
        return (
            f"got a token shorter than {MIN_TOKEN_LENGTH} characters,"
            f" expected at least {MIN_TOKEN_LENGTH}"
        )
    if not all("!" <= c <= "~" for c in token):
        return "got a token with a space or a character outside visible ASCII, expected neither"
    return None


def read_token_file(path: Path) -> tuple[list[str], list[str]]:
    """The tokens in ``path`` (one a line, blank lines skipped, ends trimmed) and the problems."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return [], [f"cannot read {str(path)!r} ({exc.strerror})"]
    except UnicodeDecodeError:
        return [], [f"{str(path)!r} is not valid UTF-8"]
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        return [], [f"{str(path)!r} holds no token, expected one token a line"]
    problems = [
        f"line {n} of {str(path)!r}: {problem}"
        for n, token in lines
        if (problem := token_problem(token)) is not None
    ]
    return [token for _, token in lines], problems


def unreadable(path: Path) -> str | None:
    """Why the daemon cannot read ``path``, or None."""
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        return f"cannot read {str(path)!r} ({exc.strerror})"
    return None


def tls_problem(certfile: Path, keyfile: Path) -> str | None:
    """Why this certificate and key cannot serve TLS (not PEM, a key of another certificate,
    an encrypted key), or None. Both files must be readable.

    An encrypted key is refused rather than served: OpenSSL would ask for its passphrase on the
    terminal, which a daemon does not have.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_passphrase)
    except ssl.SSLError as exc:
        return (
            f"{str(certfile)!r} and {str(keyfile)!r} are not a PEM certificate and its"
            f" unencrypted private key ({exc.reason or exc})"
        )
    return None


def _no_passphrase() -> str:
    return ""
