"""``tokendealer apply FILE``: make the clients a file lists exist as listed, through
``tokendealer.admin.declarative`` (each change audited with the actor ``cli:USER``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from tokendealer.admin import declarative
from tokendealer.cli.common import cli_actor, compact_json, echo_json, errors, with_store
from tokendealer.store import SQLStore

_Outcome = tuple[declarative.Plan, declarative.Applied | None, int | None]


@click.command(short_help="Create, update (and prune) clients to match a YAML or JSON file.")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option(
    "--prune", is_flag=True, help="Also remove registered clients the file does not list."
)
@click.option(
    "--secrets-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the new clients' secrets to this new file (JSON, mode 0600) instead of "
    "printing them; a file that exists is refused before anything changes.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def apply(
    ctx: click.Context,
    file: Path,
    dry_run: bool,
    prune: bool,
    secrets_out: Path | None,
    as_json: bool,
) -> None:
    """Make the clients FILE lists exist as listed (YAML; JSON for a .json file).

    FILE is a list of clients, or a mapping whose one key, clients, holds it; each has
    a client_id and any of scopes, audiences, ttl, description, claims, rate_limit
    (COUNT/UNIT, or null for TOKENDEALER_RATE_LIMIT) and rate_limit_mode (enforce or
    monitor), and a private_key_jwt client its auth_method and jwks_uri or jwks. Clients
    missing are created and their secrets printed once (or written to --secrets-out);
    clients that differ are updated; the others are left alone, so a second run changes
    nothing. A field left out means its empty value (no scopes, no audiences, the
    default TTL, no description, no claims, the service's rate limit, enforced).
    Registered clients the file does not list are kept, or removed with --prune. Each
    change is recorded in the audit trail with the actor cli:USER.

    The whole file is checked first: a bad file changes nothing, and the error names its
    line. Changes are then made one at a time, each its own transaction: if one is refused
    (someone registered, changed or removed that client since the file was compared with
    the database), the command stops, prints what it did (and the secrets of the clients
    it created) and exits 1; the changes made stand, and running it again finishes the
    job.
    """
    with errors():
        wanted = declarative.read(file)

    async def run(store: SQLStore) -> _Outcome:
        planned = await declarative.plan(store, wanted, prune=prune)
        # Before the first change, and in a dry run alike: a secrets file that cannot be
        # made stops everything.
        target = secrets_out if planned.count("create") else None
        if target is not None:
            _check_new_file(target)
        if dry_run:
            return planned, None, None
        out = None if target is None else _create_private(target)
        return planned, await declarative.apply(store, planned, actor=cli_actor()), out

    planned, applied, out = with_store(ctx, run)
    if applied is None:
        _report(planned, None, None, as_json)
        return
    problems = []
    if applied.failed is not None:
        problems.append(
            f"{applied.failed.kind} {applied.failed.client_id} failed: {applied.error}; "
            "the changes before it were made, none after it (run apply again to finish)"
        )
    written_to = None
    try:
        if out is not None:
            _write_secrets(out, applied.secrets)
            written_to = secrets_out
    except OSError as exc:
        problems.append(
            f"the secrets could not be written to {secrets_out} ({exc.strerror}): "
            "they are printed instead"
        )
    finally:  # the secrets of the clients created are printed unless written: never lost
        _report(planned, applied, written_to, as_json)
    if problems:
        raise click.ClickException("; ".join(problems))


def _check_new_file(path: Path) -> None:
    """What --secrets-out needs, checked alike by a dry run: a name that does not exist
    (not even as a link) in a directory that does, and that this user may write in."""
    if os.path.lexists(path):
        raise _exists(path)
    directory = path.parent
    if not directory.is_dir():
        raise click.ClickException(f"{path}: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise click.ClickException(f"{path}: cannot create a file in {directory}")


def _create_private(path: Path) -> int:
    """A new file only the owner can read: never an existing one, nor through a link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(path, flags, 0o600)
    except FileExistsError:
        raise _exists(path) from None


def _write_secrets(out: int, secrets: Mapping[str, str]) -> None:
    with os.fdopen(out, "w", encoding="utf-8") as written:
        written.write(json.dumps(dict(secrets), indent=2) + "\n")


def _exists(path: Path) -> click.ClickException:
    return click.ClickException(
        f"{path} exists: --secrets-out only writes a new file (move it away or name another)"
    )


def _report(
    planned: declarative.Plan,
    applied: declarative.Applied | None,
    written_to: Path | None,
    as_json: bool,
) -> None:
    """The plan (``applied`` None: a dry run) or what was done; the new secrets printed
    unless ``written_to`` a file."""
    if as_json:
        echo_json(_as_json(planned, applied, written_to))
    else:
        _print(planned, applied, written_to)


def _print(
    planned: declarative.Plan, applied: declarative.Applied | None, written_to: Path | None
) -> None:
    if applied is None:
        click.echo("dry run: nothing was changed; the plan:")
    for action in planned.actions if applied is None else applied.done:
        click.echo(_line(action))
    done: declarative.Plan | declarative.Applied = planned if applied is None else applied
    verbs = _VERBS.values() if applied is not None else (f"to {kind}" for kind in _VERBS)
    summary = [f"{done.count(kind)} {verb}" for kind, verb in zip(_VERBS, verbs, strict=True)]
    click.echo(", ".join([*summary, f"{len(planned.unchanged)} unchanged"]))
    if planned.unlisted:
        kept = ", ".join(planned.unlisted)
        click.echo(f"kept, not in the file: {kept} (--prune removes them)")
    if applied is not None and applied.secrets:
        if written_to is not None:
            click.echo(f"secrets of the new clients written to {written_to}")
        else:
            click.echo("secrets of the new clients, shown once (store them now):")
            for client_id, secret in applied.secrets.items():
                click.echo(f"{client_id}: {secret}")


_VERBS = {"create": "created", "update": "updated", "remove": "removed"}


def _line(action: declarative.Action) -> str:
    if action.kind != "update":
        return f"{action.kind} {action.client_id}"
    changes = "; ".join(
        f"{name} {_value(change['from'])} -> {_value(change['to'])}"
        for name, change in action.changes.items()
    )
    return f"update {action.client_id}: {changes}"


def _value(value: Any) -> str:
    if isinstance(value, dict):  # claims
        return compact_json(value)
    if isinstance(value, list):
        return "[" + ", ".join(value) + "]"
    if value is None:
        return "default"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _as_json(
    planned: declarative.Plan, applied: declarative.Applied | None, written_to: Path | None
) -> dict[str, Any]:
    actions = planned.actions if applied is None else applied.done
    data: dict[str, Any] = {
        "dry_run": applied is None,
        "actions": [
            {"action": action.kind, "client_id": action.client_id}
            | ({"changes": dict(action.changes)} if action.kind == "update" else {})
            for action in actions
        ],
        "unchanged": list(planned.unchanged),
        "unlisted": list(planned.unlisted),
    }
    if applied is not None and written_to is None:
        data["secrets"] = dict(applied.secrets)
    elif applied is not None and applied.secrets:
        data["secrets_file"] = str(written_to)
    if applied is not None and applied.failed is not None:
        data["error"] = f"{applied.failed.kind} {applied.failed.client_id}: {applied.error}"
    return data
