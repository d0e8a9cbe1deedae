"""No log line of the whole suite holds a secret, token or password the suite used
(issue 14). Runs last (``conftest.pytest_collection_modifyitems``): it reads what every
test before it wrote (``tests.support.leaks``)."""

from __future__ import annotations

import pytest

from tests.support import leaks


def test_no_secret_or_token_reached_a_log_line(request: pytest.FixtureRequest) -> None:
    if request.config.getoption("capture") == "no":
        pytest.skip("run with -s: pytest captured no output to read")
    if not leaks.USED:
        pytest.skip("no test before this one handled a secret or a token")
    texts = list(leaks.LINES)
    texts += [path.read_text(errors="replace") for path in leaks.LOG_FILES if path.exists()]
    runs: set[str] = set()
    for text in texts:
        runs |= leaks.runs(text)
    leaked = []
    for value in leaks.USED:
        if leaks.is_run(value) or leaks.is_jwt(value):
            found = any(piece in runs for piece in leaks.pieces(value))
        else:  # a password with spaces, say: few of those, looked for whole
            found = any(value in text for text in texts)
        if found:
            leaked.append(value[:8] + "...")
    assert not leaked, f"{len(leaked)} secrets or tokens in log output: {leaked[:10]}"


def test_the_scan_finds_a_secret_where_a_log_would_put_it() -> None:
    """The matching itself: a secret inside JSON, a form or a header is one of the runs;
    a JWT is found by its signature alone."""
    secret = "Zm9vYmFyYmF6cXV4cXV1eHh5ejEyMzQ1Njc4OTA"
    token = (
        "eyJhbGciOiJSUzUxMiJ9.eyJzdWIiOiJzdmMiLCJqdGkiOiJhYmMifQ.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWc"
    )
    for line in (
        f'{{"event": "x", "secret": "{secret}"}}',
        f"client_id=svc&client_secret={secret}&grant_type=client_credentials",
        f"Authorization: Bearer {secret}",
    ):
        assert secret in leaks.runs(line)
    signature_only = '{"leak": "c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWc"}'
    assert any(piece in leaks.runs(signature_only) for piece in leaks.pieces(token))
    assert not any(piece in leaks.runs('{"event": "request"}') for piece in leaks.pieces(token))
