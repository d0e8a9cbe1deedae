"""The ``tokendealer`` command: serve, and manage clients and keys.

Every failure exits non-zero with one line on stderr (``Error: ...``), never a traceback.
Every store write is one transaction, so a failed command leaves the store as it was.
Each command group is a module here: ``serve``, ``clients``, ``keys``, ``trust``...;
``common`` holds what they share.

A command's module is imported when the command is first looked up, not with this
package: ``tokendealer serve`` is the process that serves (its only worker, with
``--workers 1``), and the spawned workers of ``--workers N`` import this package again
(the console script is their ``__main__``), so what the other commands import (PyYAML for
``apply``, the trust discovery client, ...) would otherwise stay in every worker's memory.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, MutableMapping

import click

from tokendealer import __version__

#: Each command's name and the module that defines it (under the same name).
COMMANDS = {
    "init": "tokendealer.cli.init",
    "serve": "tokendealer.cli.serve",
    "clients": "tokendealer.cli.clients",
    "keys": "tokendealer.cli.keys",
    "admins": "tokendealer.cli.admins",
    "audit": "tokendealer.cli.audit",
    "apply": "tokendealer.cli.apply",
    "trust": "tokendealer.cli.trust",
}


class LazyCommands(MutableMapping[str, click.Command]):
    """A group's commands by name, each one's module imported when it is first looked up
    (click reads ``Group.commands`` as a mapping: ``get``, iteration, ``[]``)."""

    def __init__(self, modules: dict[str, str]) -> None:
        self._modules = dict(modules)
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        command = self._loaded.get(name)
        if command is None:
            module = importlib.import_module(self._modules[name])  # KeyError: no such command
            command = getattr(module, name)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self._modules[name]}.{name} is not a click command")
            self._loaded[name] = command
        return command

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._modules.setdefault(name, "")
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self._modules[name]
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)


@click.group(
    context_settings={"auto_envvar_prefix": "TOKENDEALER", "help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="tokendealer")
def cli() -> None:
    """tokendealer: OAuth 2.0 client-credentials token service.

    Configuration comes from TOKENDEALER_* environment variables (see README.rst).
    """


cli.commands = LazyCommands(COMMANDS)


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
