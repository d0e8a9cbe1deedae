"""Token waste: token requests from a client that still holds a good token.

A client that fetches a new token for every call, instead of reusing the one it holds
until it nears expiry, costs a signature (and, at hosted peers, money) per call. This
process remembers, per client, token epoch, scope and audience, when it issued the latest
token and when that token expires; a request arriving while that token still has more
than half its lifetime left is *early*. What a process knows is what it issued: a client
whose requests are spread over several workers or replicas is seen in part (keep-alive
connections usually stay with one worker).
"""

from __future__ import annotations

#: Entries remembered per process; the oldest are forgotten first (bounded by the
#: registered clients' scope and audience combinations in practice).
MAX_HELD = 10_000


class TokenWaste:
    def __init__(self, max_held: int = MAX_HELD) -> None:
        self.max_held = max_held
        #: (client id, epoch, scope, audience) -> (issued at, expires at) of the latest token.
        self._held: dict[tuple[str, str, str, str], tuple[float, float]] = {}

    def issued(
        self, client_id: str, epoch: str, scope: str, audience: str, now: float, expires_at: float
    ) -> bool:
        """Note a token just issued; True when the client still held one for the same
        scope and audience with more than half its lifetime left."""
        key = (client_id, epoch, scope, audience)
        held = self._held.pop(key, None)
        early = held is not None and now < (held[0] + held[1]) / 2
        if len(self._held) >= self.max_held:
            del self._held[next(iter(self._held))]
        self._held[key] = (now, expires_at)
        return early
