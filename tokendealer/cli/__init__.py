"""The ``tokendealer`` command: serve, and manage clients and keys.

Every failure exits non-zero with one line on stderr (``Error: ...``), never a traceback.
Every store write is one transaction, so a failed command leaves the store as it was.
Each command group is a module here: ``serve``, ``clients``, ``keys``, ``trust``...;
``common`` holds what they share.
"""

from __future__ import annotations

import sys

import click

from tokendealer import __version__
from tokendealer.cli.admins import admins
from tokendealer.cli.apply import apply
from tokendealer.cli.audit import audit
from tokendealer.cli.clients import clients
from tokendealer.cli.init import init
from tokendealer.cli.keys import keys
from tokendealer.cli.serve import serve
from tokendealer.cli.trust import trust


@click.group(
    context_settings={"auto_envvar_prefix": "TOKENDEALER", "help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="tokendealer")
def cli() -> None:
    """tokendealer: OAuth 2.0 client-credentials token service.

    Configuration comes from TOKENDEALER_* environment variables (see README.rst).
    """


cli.add_command(init)
cli.add_command(serve)
cli.add_command(clients)
cli.add_command(keys)
cli.add_command(admins)
cli.add_command(audit)
cli.add_command(apply)
cli.add_command(trust)


def main() -> None:
    """Console entry point: a usage error is one ``Error: ...`` line, like every failure.

    Click's own handling would print the usage block and a hint before the error; the
    contract is one line on stderr (``--help`` shows the usage).
    """
    try:
        code = cli.main(prog_name="tokendealer", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
