"""A served worker's own work per token, in instructions: exact on a shared machine.

Seconds move with whatever else runs here; instructions do not. One run, in a fresh
temporary directory:

1. a SQLite store, a keys directory and a client registered with the real CLI
   (bench_service's helpers), the limits raised so nothing is refused, the client cache
   and the key watch slowed to once a minute (their background reads would otherwise
   be counted, many times more often than at full speed, since the worker runs some
   fifty times slower under valgrind);
2. ``tokendealer serve --workers 1`` (the worker is the serving process itself) under
   ``valgrind --tool=callgrind`` with counting off;
3. ``--warm-up`` token requests over one keep-alive connection (``client_secret_basic``),
   then counting on (``callgrind_control -i on``), ``--requests`` more, a dump, the end;
4. the instructions counted, less those under cryptography's RSA ``sign`` (the signature:
   the same work whatever the server), divided by the requests; and of those, the part
   outside the request's task (HTTP parsing, the event loop, timers).

Usage (``apt-get install valgrind``; about a minute)::

    .venv/bin/python bench/bench_instructions.py
    .venv/bin/python bench/bench_instructions.py --requests 1000 --access-log off

The figure is for comparing two versions of the code on one machine (the same Python,
the same libraries): what a change removes from each token, whatever the neighbours do.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_service import (  # the sibling module, found through sys.path
    HOST,
    UNLIMITED_RATE,
    _raw_request,
    bench_environment,
    free_port,
    register_client,
    tail,
    token_route,
    tokendealer_command,
)

#: Longest wait for the worker, slowed down by valgrind, to answer its first request.
STARTUP_TIMEOUT = 300.0
#: The signature's entry point in cryptography's Rust bindings, as callgrind names it.
SIGN_FUNCTION = re.compile(r"RsaPrivateKey>::__pymethod_sign__")
#: The C function that runs each step of an asyncio task (the request's, among others).
TASK_FUNCTION = re.compile(r"_asynciomodule\.c:task_step_impl \[")


def exchange(sock: socket.socket, request: bytes) -> None:
    """Send one request, read its whole response; it must be a 200."""
    sock.sendall(request)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"connection closed: {data[:300]!r}")
        data += chunk
        head, separator, body = data.partition(b"\r\n\r\n")
        if not separator:
            continue
        status = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status:
            raise RuntimeError(f"not a 200: {head[:300]!r}")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if length is None:
            raise RuntimeError(f"no Content-Length: {head[:300]!r}")
        if len(body) >= int(length.group(1)):
            return


def connect(port: int, process: subprocess.Popen[bytes], log: Path) -> socket.socket:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{tail(log)}")
        try:
            return socket.create_connection((HOST, port), timeout=STARTUP_TIMEOUT)
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"no server after {STARTUP_TIMEOUT:.0f} s:\n{tail(log)}")


def inclusive(profile: Path, pattern: re.Pattern[str]) -> int:
    """The inclusive instructions of the first function ``pattern`` matches."""
    annotated = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(profile)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in annotated.splitlines():
        if pattern.search(line):
            return int(line.split()[0].replace(",", ""))
    return 0


def total(profile: Path) -> int:
    match = re.search(r"^totals:\s+(\d+)", profile.read_text(errors="replace"), re.M)
    if match is None:
        raise RuntimeError(f"no totals in {profile}")
    return int(match.group(1))


def run(args: argparse.Namespace, workdir: Path) -> None:
    env = bench_environment(workdir, access_log=args.access_log == "on")
    for name in (
        "TOKENDEALER_RATE_LIMIT",
        "TOKENDEALER_VERIFY_RATE_LIMIT",
        "TOKENDEALER_AUTH_FAILURE_LIMIT",
    ):
        env.setdefault(name, UNLIMITED_RATE)
    env.update(TOKENDEALER_CLIENT_CACHE_TTL="60", TOKENDEALER_KEY_WATCH_INTERVAL="60")
    client_id, secret = register_client(env)
    port = free_port()
    request = _raw_request(token_route(client_id, secret), port)
    out = workdir / "callgrind.out"
    log = workdir / "serve.log"
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        *tokendealer_command(),
        "serve",
        "--workers",
        "1",
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        with connect(port, process, log) as sock:
            for _ in range(args.warm_up):
                exchange(sock, request)
            subprocess.run(
                ["callgrind_control", "-i", "on", str(process.pid)], check=True, capture_output=True
            )
            for _ in range(args.requests):
                exchange(sock, request)
            subprocess.run(
                ["callgrind_control", "-d", str(process.pid)], check=True, capture_output=True
            )
    finally:
        os.killpg(process.pid, 15)
        process.wait(60)
    dumps = sorted(workdir.glob("callgrind.out.*")) or [out]
    profile = dumps[0]
    counted = total(profile)
    signing = inclusive(profile, SIGN_FUNCTION)
    tasks = inclusive(profile, TASK_FUNCTION)
    if not signing or not tasks:
        raise RuntimeError("callgrind_annotate named no signature or no task step")
    per_token = (counted - signing) / args.requests
    outside = (counted - tasks) / args.requests
    print(
        f"POST /oauth/token, one worker, one keep-alive connection, access log "
        f"{args.access_log}; {args.requests} requests counted after {args.warm_up}"
    )
    print(f"instructions per token besides the signature: {per_token:,.0f}")
    print(f"  of which outside the request's task (HTTP parsing, loop, timers): {outside:,.0f}")
    print(f"the signature's own: {signing / args.requests:,.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="counted (default 400)")
    parser.add_argument("--warm-up", type=int, default=50, help="not counted (default 50)")
    parser.add_argument("--access-log", choices=("on", "off"), default="on")
    args = parser.parse_args(argv)
    if not (1 <= args.requests <= 100_000 and 0 <= args.warm_up <= 100_000):
        parser.error("--requests in [1, 100000], --warm-up in [0, 100000]")
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (apt-get install valgrind)")
    workdir = Path(tempfile.mkdtemp(prefix="tokendealer-instructions-"))
    try:
        run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
