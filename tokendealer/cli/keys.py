"""``tokendealer keys ...``: the signing keys."""

from __future__ import annotations

from pathlib import Path

import click

from tokendealer.admin import keys as admin_keys
from tokendealer.cli.common import cli_actor, echo_json, errors, settings_of, with_store
from tokendealer.keys.keyset import (
    DEFAULT_ALG,
    DEFAULT_KEY_BITS,
)
from tokendealer.library.algorithms import SIGNING_ALGORITHMS
from tokendealer.settings import KEY_STORES, ConfigError, decode_key_encryption_key

_ALG_HELP = (
    "Signing algorithm of the new key: RS* and PS* sign with an RSA key, ES256 with EC "
    "P-256, ES384 with EC P-384, EdDSA with Ed25519."
)
_BITS_HELP = f"RSA modulus size of the new key [default: {DEFAULT_KEY_BITS}]; RSA keys only."
#: The columns of ``keys list``, in order: the header row names them as ``--json`` does.
_KEY_COLUMNS = ("kid", "state", "alg", "bits", "created_at", "activate_at", "retired_at")


#: The options of a new key, shared by ``generate`` and ``rotate``.
_ALG = click.option(
    "--alg",
    type=click.Choice(SIGNING_ALGORITHMS),
    default=DEFAULT_ALG,
    show_default=True,
    help=_ALG_HELP,
)
_BITS = click.option(
    "--bits",
    type=click.Choice([str(size) for size in admin_keys.KEY_SIZES]),
    default=None,
    help=_BITS_HELP,
)


@click.group(short_help="Manage signing keys.")
def keys() -> None:
    """Manage the signing keys: in TOKENDEALER_KEYS_DIR, or in the database with
    TOKENDEALER_KEY_STORE=database."""


@keys.command("generate", short_help="Create a key that signs from now on.")
@_ALG
@_BITS
@click.pass_context
def keys_generate(ctx: click.Context, alg: str, bits: str | None) -> None:
    """Create a key; it signs new tokens at once, older keys stay published."""
    settings = settings_of(ctx)
    kid = with_store(
        ctx,
        lambda store: admin_keys.generate(
            store, settings, actor=cli_actor(), alg=alg, bits=_size(bits)
        ),
    )
    click.echo(kid)


@keys.command("rotate", short_help="Publish a new key now; it signs after a delay.")
@click.option(
    "--activate-after",
    type=click.IntRange(0, 30 * 86400),
    default=None,
    help="Seconds until the new key signs [default: the JWKS max-age]. 0 for an emergency: "
    "the new key signs at once, replacing any pending next key.",
)
@_ALG
@_BITS
@click.pass_context
def keys_rotate(ctx: click.Context, activate_after: int | None, alg: str, bits: str | None) -> None:
    """Create the next key: published in the JWKS at once, signing after --activate-after.

    Waiting one JWKS max-age lets every resource server cache the key before it meets a
    token signed with it; the current key is then retired (still published). Only one
    rotation may be pending.

    --activate-after 0 is the emergency rotation (a key leaked), and works while a
    rotation is pending: the pending next key is unpublished and deleted, never
    activated, since it may have leaked with the keys directory (it has signed no
    token), and a new key signs at once. The active key is retired; 'keys remove' it
    next so that its tokens fail.
    """
    settings = settings_of(ctx)
    rotation = with_store(
        ctx,
        lambda store: admin_keys.rotate(
            store,
            settings,
            actor=cli_actor(),
            activate_after=activate_after,
            alg=alg,
            bits=_size(bits),
        ),
    )
    click.echo(rotation.kid)
    for kid in rotation.replaced:
        click.echo(f"replaced the pending key {kid}, which never signed: deleted", err=True)
    click.echo(f"key {rotation.kid} is published and signs in {rotation.delay:g} seconds", err=True)


def _size(bits: str | None) -> int | None:
    return None if bits is None else int(bits)


@keys.command("prune", short_help="Remove retired keys whose tokens have all expired.")
@click.option("--force", is_flag=True, help="Also remove retired keys whose tokens may live.")
@click.pass_context
def keys_prune(ctx: click.Context, force: bool) -> None:
    """Delete retired keys retired longer ago than the longest token lifetime (the
    service's or any client's, plus leeway); younger ones are kept, and named, unless
    --force. Active and next keys are never pruned."""
    settings = settings_of(ctx)
    pruned = with_store(
        ctx, lambda store: admin_keys.prune(store, settings, actor=cli_actor(), force=force)
    )
    removed, kept, longest = pruned.removed, pruned.kept, pruned.longest_lifetime
    for kid in removed:
        click.echo(f"removed {kid}")
    if kept:
        click.echo(
            f"kept {len(kept)} retired key(s) whose tokens may still be valid (retired less "
            f"than {longest} s ago): {', '.join(kept)}; --force removes them anyway",
            err=True,
        )


class _KidCommand(click.Command):
    """A command whose operands are key ids. Key ids are base64url and may start with
    '-' (even '-h'): every word but a help option, given alone, is an operand, as if
    after '--'. A real kid is 43 characters, so '-h' alone is always the help."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        names = self.get_help_option_names(ctx)
        operands = [arg for arg in args if arg not in names]
        if operands[:1] == ["--"]:
            operands = operands[1:]
        return super().parse_args(ctx, [*(a for a in args if a in names), "--", *operands])


@keys.command("remove", cls=_KidCommand, short_help="Unpublish and delete a key now (compromise).")
@click.argument("kid")
@click.pass_context
def keys_remove(ctx: click.Context, kid: str) -> None:
    """Remove KID from the JWKS at once; tokens it signed stop verifying at the dealer.

    The active key cannot be removed: rotate with --activate-after 0 first.
    """
    settings = settings_of(ctx)
    with_store(ctx, lambda store: admin_keys.remove(store, settings, actor=cli_actor(), kid=kid))
    click.echo(f"removed {kid}")


@keys.command("list", short_help="List keys and their states.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@click.pass_context
def keys_list(ctx: click.Context, as_json: bool) -> None:
    """List every key with its state (next, active, retired), algorithm, size and
    times; text output is tab-separated under a header row."""
    settings = settings_of(ctx)
    if settings.key_store == "database":
        rows = with_store(ctx, lambda store: admin_keys.listing(store, settings))
    else:  # the files alone: no database needed
        with errors():
            rows = admin_keys.directory_listing(settings)
    if as_json:
        echo_json(rows)
        return
    click.echo("\t".join(_KEY_COLUMNS))
    for row in rows:
        click.echo("\t".join("-" if row[c] is None else str(row[c]) for c in _KEY_COLUMNS))


@keys.command("migrate", short_help="Copy every key into the database key store, or back.")
@click.option(
    "--to",
    "to",
    type=click.Choice(KEY_STORES),
    required=True,
    help="database: from TOKENDEALER_KEYS_DIR into the database, sealed under the "
    "key-encryption key; directory: from the database into TOKENDEALER_KEYS_DIR.",
)
@click.pass_context
def keys_migrate(ctx: click.Context, to: str) -> None:
    """Copy every signing key, with its kid, algorithm, creation and activation times,
    from the keys directory (TOKENDEALER_KEYS_DIR) into the database key store (--to
    database), or from the database into a keys directory (--to directory: 0600 PEM files
    and a manifest). Either way it needs the key-encryption key
    (TOKENDEALER_KEY_ENCRYPTION_KEY or TOKENDEALER_KEY_ENCRYPTION_KEY_FILE), and it works
    whatever TOKENDEALER_KEY_STORE says: run it before the first replica switches.

    No moment without an active key: both stores then hold the same keys with the same
    times, and a key's state (next, active, retired) follows from its times and the clock
    alone. So while the replicas switch TOKENDEALER_KEY_STORE one by one, each publishes
    the same keys and signs with the same active key whichever store it reads, and tokens
    signed before the switch verify after it. Run it when no rotation is under way.

    All or nothing: into the database in one transaction, into a directory the key files
    first, then the manifest. A destination that holds these very keys is left as it is,
    and said so; one that holds other keys is refused, and nothing changes. The source is
    left as it is: once every replica reads the database, delete the old keys directory
    (it holds the private keys in clear).
    """
    settings = settings_of(ctx)
    copied = with_store(
        ctx, lambda store: admin_keys.migrate(store, settings, actor=cli_actor(), to=to)
    )
    where = "the database key store" if to == "database" else str(settings.keys_dir.resolve())
    count = _keys(len(copied.kids))
    if not copied.written:
        click.echo(
            f"{where} already holds these {count} with the same times: nothing changed", err=True
        )
        return
    for kid in copied.kids:
        click.echo(f"copied {kid}")
    if to == "database":
        click.echo(
            f"{count} copied into {where}, sealed under the key-encryption key, with their "
            f"times; {settings.keys_dir.resolve()} is left as it is: switch the replicas to "
            "TOKENDEALER_KEY_STORE=database one by one, then delete it",
            err=True,
        )
    else:
        click.echo(
            f"{count} copied into {where} with their times; the database's keys are left "
            "as they are: switch the replicas to TOKENDEALER_KEY_STORE=directory one by one",
            err=True,
        )


@keys.command("rekey", short_help="Re-encrypt the database's keys under a new key-encryption key.")
@click.option(
    "--old-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="A file holding the key-encryption key the keys are sealed under now (32 bytes "
    "in base64, as TOKENDEALER_KEY_ENCRYPTION_KEY_FILE).",
)
@click.pass_context
def keys_rekey(ctx: click.Context, old_key_file: Path) -> None:
    """Open every key of the database key store with the old key-encryption key
    (--old-key-file) and seal it under the current one (TOKENDEALER_KEY_ENCRYPTION_KEY or
    TOKENDEALER_KEY_ENCRYPTION_KEY_FILE), all in one transaction. A key that opens with
    neither is refused, as are keys some of which are under the current key already and
    some not: nothing changes. Run again, it finds every key under the current key and
    says so. The keys, their kids and times are unchanged: running replicas go on signing
    with the keys they opened; restart each with the new key before the next rotation
    (a replica on the old key can no longer load a key change).
    """
    settings = settings_of(ctx)
    with errors():
        old_key = _old_key(old_key_file)
    rekeyed = with_store(
        ctx, lambda store: admin_keys.rekey(store, settings, actor=cli_actor(), old_key=old_key)
    )
    if rekeyed.already:
        click.echo(
            "every key of the database key store is already sealed under the current "
            "key-encryption key: nothing changed",
            err=True,
        )
        return
    for kid in rekeyed.kids:
        click.echo(f"re-encrypted {kid}")
    click.echo(
        f"{_keys(len(rekeyed.kids))} re-encrypted under the current key-encryption key in "
        "one transaction; the old one no longer opens them: restart every replica with the "
        "new one",
        err=True,
    )


def _keys(count: int) -> str:
    return f"{count} key{'' if count == 1 else 's'}"


def _old_key(path: Path) -> bytes:
    """The key-encryption key in ``path`` (one line naming it when unreadable)."""
    source = f"--old-key-file ({path})"
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"{source} is not base64") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read it ({exc.strerror})") from None
    return decode_key_encryption_key(text, source)
