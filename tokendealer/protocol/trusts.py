"""Trusted issuers (workload identity federation): an external issuer whose tokens
authenticate the ``federated`` clients bound to it, free of storage and the network.

A trust names the issuer (``iss``, compared exactly), where its public keys are
(``jwks_uri``, resolved once by OpenID discovery when the trust is added, or given), and
the audience its tokens must carry to be accepted here (by default this dealer's issuer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tokendealer.protocol.urls import MAX_URL_LENGTH

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
#: The longest issuer, key URL and audience of a trust, and subject of a binding.
MAX_URI_LENGTH = MAX_URL_LENGTH
MAX_SUBJECT_LENGTH = 1024


@dataclass(frozen=True)
class Trust:
    """An external issuer trusted to vouch for workloads."""

    name: str
    issuer: str
    jwks_uri: str
    audience: str
    created_at: float = 0.0


def trust_name_error(name: str) -> str | None:
    """Why ``name`` cannot name a trust, or ``None``."""
    if _NAME.fullmatch(name) is None:
        return (
            "a trust name is 1-64 characters: letters, digits and . _ - "
            "(starting with a letter or digit)"
        )
    return None
