"""``tokendealer serve``."""

from __future__ import annotations

import click

from tokendealer.cli.common import errors, settings_of
from tokendealer.log import configure
from tokendealer.observe import metrics
from tokendealer.runner.server import SERVERS


@click.command(short_help="Run the token service.")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (:: for IPv6)."
)
@click.option(
    "--port",
    default=5000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port to listen on.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes (one per core is typical).",
)
@click.option(
    "--server",
    type=click.Choice(SERVERS),
    default=SERVERS[0],
    show_default=True,
    help="ASGI server that runs the workers.",
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, workers: int, server: str) -> None:
    """Run the service; an empty directory gets its store and first signing key.

    Configuration errors and a busy port stop it with one line before any worker starts.
    Once listening, it logs one JSON line with its address, store and keys directory.
    """
    from tokendealer.runner import server as server_module

    settings = settings_of(ctx)
    configure()
    try:
        sock = server_module.bind(host, port)
        try:
            with errors():
                server_module.prepare(settings)
            sockets = server_module.listen(sock, server_module.listeners_for(workers, server))
        except BaseException:
            sock.close()
            raise
    except server_module.ListenError as exc:
        raise click.ClickException(str(exc)) from None
    server_module.log_start(sockets[0], settings, workers, server)
    # Several workers add up their metrics through files in one directory, named in the
    # environment they start with (one worker keeps its own, in memory).
    directory = metrics.multiprocess_directory() if workers > 1 else None
    try:
        status = server_module.run(sockets, workers, server, settings)
    finally:
        metrics.remove_multiprocess_directory(directory)
    ctx.exit(status)
