"""Request steps shared by the endpoints where a client authenticates with a form body
(token, introspection, revocation): read the form strictly, then authenticate."""

from __future__ import annotations

from quart import request

from tokendealer.client_auth import credentials_from
from tokendealer.form import parse_form, require_form
from tokendealer.http.ratelimit import failure_limit
from tokendealer.http.responses import dealer
from tokendealer.store import Client


async def read_form() -> dict[str, str]:
    require_form(request.content_type)
    return parse_form(await request.get_data(cache=False, as_text=False, parse_form_data=False))


async def authenticate_client(params: dict[str, str]) -> Client:
    credentials = credentials_from(request.headers.get("Authorization"), params)
    # RFC 6749 §2.3.1: failed attempts are counted and, over the limit, refused (429).
    async with failure_limit(credentials.client_id):
        return await dealer().authenticate(credentials)
