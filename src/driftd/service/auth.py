"""Bearer tokens with scopes: whether a request's token may call a route.

The tokens come from the config (:meth:`~driftd.config.Config.scope_tokens`), the scope each
route needs from where the route is registered (:mod:`driftd.service.app`); this module only
decides. A refusal is an :class:`~driftd.service.http.ApiError`, so it gets the one error body
and is counted like every other refusal: ``401 unauthorized`` without a valid token, ``403
forbidden`` for a valid token of other scopes. It never logs or echoes a token.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Mapping, Sequence

from fastapi import Request

from driftd.config import SCOPES, Scope
from driftd.service.http import ApiError

__all__ = ["Authorizer"]


class Authorizer:
    """Which scopes a bearer token holds, among ``tokens`` (scope -> its tokens).

    Without any token (``enabled`` false) routes are registered without the check: the daemon
    listens on loopback, or the operator opted out with ``allow_unauthenticated_remote``.
    """

    def __init__(self, tokens: Mapping[Scope, Sequence[str]]) -> None:
        self._digests = [(scope, _digest(t)) for scope in SCOPES for t in tokens.get(scope, ())]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def scopes_of(self, authorization: str | None) -> frozenset[Scope]:
        """The scopes of the token in an ``Authorization`` header (none for no or a bad token).

        The token is compared with every configured token, each in constant time and without
        stopping at a match, so the time taken does not tell which token or scope matched; the
        comparison is of SHA-256 digests, so it does not tell a token's length either.
        """
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return frozenset()
        presented = _digest(given)
        matches = [(scope, hmac.compare_digest(presented, d)) for scope, d in self._digests]
        return frozenset(scope for scope, match in matches if match)

    def check(self, authorization: str | None, scope: Scope) -> None:
        """Return if the header's token holds ``scope``; raise the refusal otherwise."""
        held = self.scopes_of(authorization)
        if scope in held:
            return
        if held:
            raise ApiError(
                403,
                "forbidden",
                f"this route needs a token with the {scope!r} scope, which the token given"
                " does not hold",
                headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
            )
        error = 'error="invalid_token", ' if authorization else ""
        raise ApiError(
            401,
            "unauthorized",
            f"a valid bearer token with the {scope!r} scope is required",
            headers={"WWW-Authenticate": f'Bearer {error}scope="{scope}"'},
        )

    def require(self, scope: Scope) -> Callable[[Request], Awaitable[None]]:
        """A FastAPI dependency that lets a request through only with a token of ``scope``. It
        runs before the endpoint reads the body or the query, so a refused client learns
        nothing about either."""

        async def dependency(request: Request) -> None:
            self.check(request.headers.get("authorization"), scope)

        return dependency


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
