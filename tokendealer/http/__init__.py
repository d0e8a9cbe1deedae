"""The HTTP layer: the only part of tokendealer's server that imports Quart."""

from tokendealer.http.app import create_app

__all__ = ["create_app"]
