"""The dealer of the app answering the current request (``create_app`` puts it there as
the app starts), for every Quart route."""

from __future__ import annotations

from quart import current_app

from tokendealer.service.dealer import Dealer


def dealer() -> Dealer:
    found: Dealer = current_app.extensions["tokendealer"]
    return found
