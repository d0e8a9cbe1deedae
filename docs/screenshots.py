"""The console screenshots of README.rst, taken again: ``.venv/bin/python docs/screenshots.py``.

Starts ``tokendealer serve`` on an empty directory (as the end-to-end tests do), sets it up
with the CLI as an operator would (an administrator, a few clients, tokens, a secret
rotation, a key rotation), signs in through the console's form in headless Chromium and
saves docs/console-{dashboard,clients,client,audit}.png.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import Page, sync_playwright  # noqa: E402

from tests.support.cli import CLI  # noqa: E402
from tests.support.servers import ServerProcess, run_server  # noqa: E402

ISSUER = "https://tokens.example.com"
ADMIN, PASSWORD = "alice", "a long console password"
VIEWPORT = {"width": 1200, "height": 800}
#: (id, description, scopes, audiences, ttl)
CLIENTS = [
    (
        "billing",
        "Billing service: invoices and payment runs",
        ["invoices:read", "invoices:write"],
        ["https://api.example.com/billing"],
        None,
    ),
    (
        "reports",
        "Nightly reports (data team)",
        ["reports:read", "invoices:read"],
        ["https://api.example.com/reports"],
        "900",
    ),
    ("ops", "Ops automation: the admin API", ["tokendealer:admin"], [ISSUER], "300"),
    ("legacy-export", "CSV export, retired in March", ["invoices:read"], [], None),
]


def prepare(server: ServerProcess) -> None:
    """What an operator would have done by the time someone opens the console."""
    cli = CLI(server.env, cwd=server.log_path.parent)
    cli.ok("admins", "add", ADMIN, "--password-stdin", input=PASSWORD + "\n")
    secrets = {}
    for client_id, description, scopes, audiences, ttl in CLIENTS:
        args = ["--description", description]
        args += [arg for scope in scopes for arg in ("--scope", scope)]
        args += [arg for audience in audiences for arg in ("--audience", audience)]
        args += ["--ttl", ttl] if ttl else []
        secrets[client_id] = server.add_client(client_id, *args)
    for client_id in ("billing", "reports"):
        server.token(client_id, secrets[client_id])
    cli.ok("clients", "rotate-secret", "billing", "--grace", "86400")
    cli.ok("clients", "disable", "legacy-export")
    cli.ok("keys", "rotate")


def shoot(page: Page, url: str, path: Path) -> None:
    page.goto(url)
    page.screenshot(path=path, full_page=True)
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KB")


def main() -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("no chromium on PATH")
    with (
        tempfile.TemporaryDirectory() as workdir,
        run_server(Path(workdir), env={"TOKENDEALER_ISSUER": ISSUER}) as server,
    ):
        prepare(server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium)
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(server.url + "/admin/login")
            page.fill("#username", ADMIN)
            page.fill("#password", PASSWORD)
            with page.expect_navigation():
                page.click("main button[type=submit]")
            admin = server.url + "/admin"
            shoot(page, admin + "/", ROOT / "docs" / "console-dashboard.png")
            shoot(page, admin + "/clients", ROOT / "docs" / "console-clients.png")
            shoot(page, admin + "/clients/billing", ROOT / "docs" / "console-client.png")
            shoot(page, admin + "/audit?limit=12", ROOT / "docs" / "console-audit.png")
            browser.close()


if __name__ == "__main__":
    main()
