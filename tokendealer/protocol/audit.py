"""The audit trail's record: who changed what, when; free of storage.

An event never carries a secret, a digest or a password: ``details`` holds what changed
(scopes, audiences, a TTL, a grace period, a kid...), built by the admin service, which
knows which fields are secret.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

#: Every action the trail records.
ACTIONS = (
    "client.create",
    "client.update",
    "client.rotate_secret",
    "client.disable",
    "client.enable",
    "client.remove",
    "key.generate",
    "key.rotate",
    "key.prune",
    "key.remove",
    "key.migrate",
    "key.rekey",
    "admin.create",
    "admin.remove",
    "admin.set_password",
    "admin.sign_in",
    "admin.sign_in_failed",
    "trust.create",
    "trust.remove",
)


@dataclass(frozen=True)
class AuditEvent:
    """One change: ``actor`` is ``admin:NAME``, ``client:ID`` (an API caller) or
    ``cli:USER``; ``target`` what it changed (``client:ID``, ``key:KID``, ``admin:NAME``,
    ``trust:NAME``)."""

    actor: str
    action: str
    target: str
    details: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)
    #: Assigned by the store; ``None`` until recorded.
    id: int | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown audit action {self.action!r}")
