"""Per-client claims in the console: the "Claims (JSON object)" field of the register
form and of the client page, its refusals shown next to it, and the tokens it gives."""

from __future__ import annotations

import html
import json

import pytest
from quart import Quart

from tests.support.console import Console, Page, add_admin, cheap_passwords
from tests.support.environment import QuartClient
from tests.support.tokens import get_token, unverified
from tokendealer.protocol.claims import MAX_CLAIMS_SIZE, claims_size
from tokendealer.service.dealer import Dealer


@pytest.fixture(name="console")
async def _console(app: Quart, monkeypatch: pytest.MonkeyPatch) -> Console:
    cheap_passwords(monkeypatch)
    await add_admin(app)
    console = Console(app)
    assert (await console.sign_in()).status == 303
    return console


async def _edit(console: Console, claims: str) -> Page:
    """The client page's policy form, posted with ``claims`` and the rest empty."""
    return await console.post(
        "/admin/clients/svc", scopes="", audiences="", ttl="", description="", claims=claims
    )


def _textarea(page_text: str, name: str) -> str:
    start = page_text.index(f'<textarea id="{name}"')
    opening_end = page_text.index(">", start) + 1
    return html.unescape(page_text[opening_end : page_text.index("</textarea>", start)])


async def test_console_registers_and_edits_claims(
    console: Console, client: QuartClient, dealer: Dealer
) -> None:
    """The register form's "Claims (JSON object)" reaches the client's tokens; the client
    page shows them as JSON to edit; a bad value is shown next to the field, with what
    was typed kept, and changes nothing; an empty field removes them all."""
    form = await console.get("/admin/clients/new")
    assert "Claims (JSON object)" in form and _textarea(form.text, "claims") == ""
    page = await console.post(
        "/admin/clients", client_id="svc", claims='{"tenant": "acme", "tier": 2}'
    )
    assert page.status == 200
    secret = page.secret
    payload = unverified(await get_token(client, "svc", secret))[1]
    assert (payload["tenant"], payload["tier"]) == ("acme", 2)

    shown = await console.get("/admin/clients/svc")
    assert json.loads(_textarea(shown.text, "claims")) == {"tenant": "acme", "tier": 2}
    typed = '{"tenant": "<b>beta</b>",}'
    bad = await _edit(console, typed)
    assert bad.status == 400
    error = bad.field_error("claims")
    assert error is not None and error.startswith("The claims are not JSON (")
    assert _textarea(bad.text, "claims") == typed and "<b>beta" not in bad.text
    reserved = await _edit(console, '{"iss": "me"}')
    assert reserved.status == 400
    assert reserved.field_error("claims") == "claim 'iss' is set by the dealer; choose another name"
    over = json.dumps({"big": "x" * MAX_CLAIMS_SIZE})
    too_big = await _edit(console, over)
    size = claims_size({"big": "x" * MAX_CLAIMS_SIZE})
    assert f"the claims take {size} bytes" in (too_big.field_error("claims") or "")
    not_object = await _edit(console, "[1]")
    assert "a JSON object" in (not_object.field_error("claims") or "")
    record = await dealer.store.get_client("svc")
    assert record is not None and record.claims == {"tenant": "acme", "tier": 2}

    edited = await _edit(console, '{"tenant": "beta"}')
    assert edited.status == 303 and edited.location == "/admin/clients/svc?notice=updated"
    assert unverified(await get_token(client, "svc", secret))[1]["tenant"] == "beta"
    cleared = await _edit(console, "  ")
    assert cleared.status == 303
    record = await dealer.store.get_client("svc")
    assert record is not None and record.claims == {}
    assert _textarea((await console.get("/admin/clients/svc")).text, "claims") == ""
    bad_new = await console.post("/admin/clients", client_id="other", claims='{"aud": 1}')
    assert bad_new.status == 400 and "'aud' is set by the dealer" in (
        bad_new.field_error("claims") or ""
    )
    assert _textarea(bad_new.text, "claims") == '{"aud": 1}'
    assert await dealer.store.get_client("other") is None
