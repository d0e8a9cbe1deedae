"""The token endpoint issues a token that /verify_token accepts."""

from tests.conftest import QuartClient, Register


async def test_token_then_verify(client: QuartClient, register: Register) -> None:
    """A registered client gets a Bearer token whose claims /verify_token returns."""
    secret = await register("svc", scopes=("read",))
    response = await client.post(
        "/oauth/token", form={"grant_type": "client_credentials"}, auth=("svc", secret)
    )
    assert response.status_code == 200
    body = await response.get_json()
    assert body["token_type"] == "Bearer" and body["scope"] == "read"
    verified = await client.post("/verify_token", form={"access_token": body["access_token"]})
    assert verified.status_code == 200
    assert (await verified.get_json())["client_id"] == "svc"
