"""The Dockerfile's essentials, checked without a Docker engine.

No image is built here (this machine has no Docker engine). Instead the Dockerfile is
parsed and held against the real code: its ENV goes through ``Settings.from_env``, its
CMD through the real click command, its HEALTHCHECK snippet is run against live HTTP
servers, and the package is built from exactly the files its COPY lines take from the
build context that ``.dockerignore`` leaves.
"""

from __future__ import annotations

import http.server
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

from tests.support.cli import cli_env
from tests.support.processes import (
    free_port,
    missing_packages,
    run_until_exit,
    tokendealer_executable,
)
from tokendealer.cli import cli
from tokendealer.http import create_app
from tokendealer.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for name, args in self.instructions if name == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions grouped by stage: continuations joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        # Comment lines are dropped, even inside a continued instruction.
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
            continue
        assert stages, f"{keyword} before the first FROM"
        stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) argument list; the shell form is refused."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(a, str) for a in value), args
    return value


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for item in shlex.split(args):
            name, sep, value = item.partition("=")
            assert sep, f"use ENV NAME=value, got {item!r}"
            env[name] = value
    return env


@pytest.fixture(name="stages", scope="module")
def _stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(name="final", scope="module")
def _final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_every_stage_is_slim_python_3_11(stages: list[Stage]) -> None:
    """Build and runtime stages both start from python:3.11-slim."""
    assert [stage.base for stage in stages] == ["python:3.11-slim"] * len(stages)


def _created_user(final: Stage) -> tuple[str, int]:
    for command in final.all("RUN"):
        match = re.search(r"useradd\b[^&;]*--uid (\d+)[^&;]* (\w[\w-]*)\s*(?:&&|;|$)", command)
        if match:
            return match.group(2), int(match.group(1))
    raise AssertionError("the runtime stage creates no user with useradd --uid")


def test_runs_as_an_unprivileged_user(final: Stage) -> None:
    """The service runs as the user the image creates, which is not root."""
    user = final.last("USER")
    assert user is not None, "no USER: the container would run as root"
    uid, _, gid = user.partition(":")
    assert uid not in ("root", "0") and gid not in ("root", "0")
    name, created_uid = _created_user(final)
    assert created_uid != 0
    assert uid in (name, str(created_uid))
    # The USER comes after the last RUN, so nothing later runs as root by accident.
    kinds = [keyword for keyword, _ in final.instructions]
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN")


def test_keys_and_database_live_on_volumes_owned_by_the_user(final: Stage) -> None:
    """The settings the image's ENV yields put keys and the SQLite file on the VOLUMEs."""
    settings = Settings.from_env(env_of(final))
    volumes = {PurePosixPath(v) for v in exec_form(final.all("VOLUME")[-1])}
    keys_dir = PurePosixPath(settings.keys_dir)
    url = settings.sqlalchemy_url
    assert url.startswith("sqlite+aiosqlite:////"), url
    database = PurePosixPath(url.removeprefix("sqlite+aiosqlite:///"))
    assert keys_dir in volumes and database.parent in volumes
    assert keys_dir != database.parent
    # Volumes start as the image's directories: they must exist and belong to the user.
    name, _ = _created_user(final)
    chowned = [
        PurePosixPath(path)
        for command in final.all("RUN")
        for path in re.findall(rf"chown -R {name}(?::\S+)? (\S+)", command)
    ]
    for volume in volumes:
        assert any(volume == p or p in volume.parents for p in chowned), volume
        assert any(str(volume) in command for command in final.all("RUN") if "mkdir" in command)


def test_cmd_is_tokendealer_serve_on_the_exposed_port(final: Stage) -> None:
    """CMD is `tokendealer serve` with options the real CLI accepts, on the EXPOSEd port."""
    assert final.last("ENTRYPOINT") is None
    argv = exec_form(final.last("CMD") or "null")
    assert argv[:2] == ["tokendealer", "serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["tokendealer"] == "tokendealer.cli:main"
    serve = cli.commands["serve"]
    with serve.make_context("serve", argv[2:]) as ctx:
        params = ctx.params
    assert params["host"] == "0.0.0.0"  # noqa: S104  # the container's port must be reachable
    assert params["workers"] == 2
    assert [str(params["port"])] == final.all("EXPOSE")


def test_tokendealer_command_is_on_the_runtime_path(stages: list[Stage]) -> None:
    """The venv the build stage installs into is copied over and its bin/ is on PATH."""
    build, final = stages[0], stages[-1]
    venv = _venv(build)
    assert image_extras(build) <= set(PROJECT["optional-dependencies"])
    assert f"--from={build.name} {venv} {venv}" in final.all("COPY")
    assert env_of(final)["PATH"].split(":")[0] == f"{venv}/bin"


# -- extras: what several replicas need is in the image --------------------------------

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: README "Running several replicas": the replicas share one database (PostgreSQL; a
#: SQLite file is local to one container) and one rate-limit count (Redis). Nothing
#: listens on these ports: the probe only needs to get past every import.
REPLICAS_ENV = {
    "TOKENDEALER_DATABASE_URL": "postgresql://dealer:pw@127.0.0.1:1/tokendealer",
    "TOKENDEALER_REDIS_URL": "redis://127.0.0.1:1/0",
}


def _venv(build: Stage) -> str:
    return next(
        match.group(1)
        for command in build.all("RUN")
        if (match := re.search(r"python -m venv (\S+)", command))
    )


def image_extras(build: Stage) -> set[str]:
    """The extras of the project the build stage's ``pip install`` names (``.[a,b]``)."""
    venv = _venv(build)
    extras: set[str] = set()
    for command in build.all("RUN"):
        if f"{venv}/bin/pip install" not in command:
            continue
        for token in shlex.split(command.replace("&&", " ")):
            match = re.fullmatch(r"\.\[([\w,-]+)\]", token)
            if match:
                extras |= set(match.group(1).split(","))
    assert extras or any(f"{venv}/bin/pip install ." in c for c in build.all("RUN")), (
        "the build stage does not install the project"
    )
    return extras


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def _closure(requirements: list[str]) -> set[str]:
    """Distributions ``requirements`` install, with their dependencies (installed ones)."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = _name(requirement.name)
        key = name + str(sorted(requirement.extras))
        if key in seen:
            continue
        seen |= {key, name}
        try:
            nested = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for wanted in ("", *requirement.extras):
            todo += [(Requirement(r), wanted) for r in nested]
    return {name for name in seen if "[" not in name}


def _modules_of(distributions: set[str]) -> set[str]:
    """Top-level import names of the installed ``distributions``."""
    return {
        module
        for module, owners in importlib.metadata.packages_distributions().items()
        if module.isidentifier() and any(_name(owner) in distributions for owner in owners)
    }


def _startup_without(extra: str, tmp_path: Path, final: Stage) -> str:
    """``serve``'s checks with the image's ENV, the replicas' settings and ``extra``'s own
    packages (those no core dependency brings) taken away: its one ``Error:`` line."""
    core = _closure(PROJECT["dependencies"])
    own = {_name(r) for r in PROJECT["optional-dependencies"][extra]} - core - {"tokendealer"}
    workdir = tmp_path / extra
    missing = missing_packages(workdir / "missing", *sorted(_modules_of(own)))
    image = {k: v for k, v in env_of(final).items() if k.startswith("TOKENDEALER_")}
    env = {**cli_env(workdir), **image, **REPLICAS_ENV, "PYTHONPATH": str(missing)}
    env["TOKENDEALER_KEYS_DIR"] = str(workdir / "keys")
    argv = [tokendealer_executable(), "serve", "--port", "0"]
    result = run_until_exit(argv, env, workdir, 60)
    errors = [line for line in result.stderr_lines() if line.startswith("Error: ")]
    assert result.code != 0 and len(errors) == 1, result.stderr[-2000:]
    return errors[0]


def test_image_has_every_extra_several_replicas_need(
    stages: list[Stage], final: Stage, tmp_path: Path
) -> None:
    """Each extra of pyproject is taken away in turn and ``tokendealer serve``'s startup
    checks run with the settings of several replicas (PostgreSQL + Redis): an extra whose
    absence stops them ("X needs the P package") must be installed by the image. With
    all the needed ones present the checks get as far as connecting to the database."""
    extras = sorted(PROJECT["optional-dependencies"])
    with ThreadPoolExecutor(max_workers=4) as pool:
        found = pool.map(lambda extra: _startup_without(extra, tmp_path, final), extras)
        lines = dict(zip(extras, found, strict=True))
    needed = {extra for extra, line in lines.items() if "needs the" in line}
    for extra in set(extras) - needed:
        assert "database unavailable" in lines[extra], (extra, lines[extra])
    assert needed, f"taking no extra away stops the replicas' startup: {lines}"
    missing = needed - image_extras(stages[0])
    assert not missing, f"the image lacks extras several replicas need: {sorted(missing)}"


# -- build context ---------------------------------------------------------------------


def _pattern(glob: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out = ""
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif glob.startswith("**", i):
            out, i = out + ".*", i + 2
        elif glob[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif glob[i] == "?":
            out, i = out + "[^/]", i + 1
        elif glob[i] == "[":
            end = glob.index("]", i)
            out, i = out + glob[i : end + 1], end + 1
        else:
            out, i = out + re.escape(glob[i]), i + 1
    return re.compile(out + "$")


def dockerignore_excludes(lines: list[str]) -> Iterator[tuple[bool, re.Pattern[str]]]:
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.removeprefix("!").strip().strip("/")
        yield (not negated), _pattern(glob)


def in_context(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or a parent directory decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for excludes, pattern in patterns:
        if any(pattern.match(c) for c in candidates):
            excluded = excludes
    return not excluded


@pytest.fixture(name="ignore", scope="module")
def _ignore() -> list[tuple[bool, re.Pattern[str]]]:
    return list(dockerignore_excludes(DOCKERIGNORE.read_text(encoding="utf-8").splitlines()))


@pytest.mark.parametrize(
    "path",
    [
        "keys/0123abcd.pem",
        "keys/manifest.json",
        "tokendealer.db",
        "data/tokendealer.db-wal",
        ".venv/bin/python",
        ".git/config",
        ".env",
        "tests/conftest.py",
        "tokendealer/__pycache__/cli.cpython-311.pyc",
    ],
)
def test_secrets_and_clutter_stay_out_of_the_build_context(
    ignore: list[tuple[bool, re.Pattern[str]]], path: str
) -> None:
    """Keys, databases, virtualenvs, git history and caches never reach the build."""
    assert not in_context(path, ignore)


def _copied_from_context(stages: list[Stage]) -> list[tuple[str, str]]:
    """(source, destination) of every COPY that reads the build context."""
    pairs = []
    for stage in stages:
        for args in stage.all("COPY"):
            if args.startswith("--from="):
                continue
            *sources, destination = shlex.split(args)
            pairs += [(source, destination) for source in sources]
    return pairs


def test_copied_files_exist_and_are_in_the_context(
    stages: list[Stage], ignore: list[tuple[bool, re.Pattern[str]]]
) -> None:
    """Every COPY source exists in the repository and .dockerignore lets it through."""
    sources = [source for source, _ in _copied_from_context(stages)]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # setuptools reads the readme while building: the build stage needs it.
    assert {"pyproject.toml", project["readme"], "tokendealer"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert in_context(source, ignore), f"COPY {source}: excluded by .dockerignore"
    assert in_context("tokendealer/py.typed", ignore)


def test_package_builds_from_the_copied_files(
    stages: list[Stage], ignore: list[tuple[bool, re.Pattern[str]]], tmp_path: Path
) -> None:
    """The build stage's files alone, placed as COPY places them, build the whole package."""
    context = tmp_path / "src"
    for source, destination in _copied_from_context(stages[:1]):
        target = context / (source if destination.endswith("/") else destination.removeprefix("./"))
        origin = ROOT / source
        if origin.is_dir():
            for file in origin.rglob("*"):
                relative = file.relative_to(ROOT).as_posix()
                if file.is_file() and in_context(relative, ignore):
                    copy = target / file.relative_to(origin)
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, copy)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
    assert not list(context.rglob("__pycache__"))
    # An sdist through the PEP 517 hook: it reads pyproject.toml, the readme and the
    # package like the image's `pip install` does (a wheel would also need `wheel` here).
    hook = (
        "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", hook, str(tmp_path / "dist")],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    sdist = tmp_path / "dist" / result.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as archive:
        built = {PurePosixPath(*PurePosixPath(n).parts[1:]).as_posix() for n in archive.getnames()}
    package = {
        file.relative_to(ROOT).as_posix()
        for file in (ROOT / "tokendealer").rglob("*")
        if file.is_file() and file.suffix in (".py", ".typed") and "__pycache__" not in file.parts
    }
    assert "tokendealer/py.typed" in package
    assert package <= built, f"missing from the image's package: {sorted(package - built)}"


# -- health check ----------------------------------------------------------------------


class _Probe(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(name="probe_server")
def _probe_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Probe)
    # A short poll interval: shutdown() waits for the loop's next poll (0.5 s by default).
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_healthcheck_probes_healthz_with_python_only(
    final: Stage, settings: Settings, probe_server: http.server.HTTPServer
) -> None:
    """The HEALTHCHECK runs python (no curl) on /healthz: 0 when 200, 1 when 503 or down."""
    args = final.last("HEALTHCHECK")
    assert args is not None
    options, _, command = args.partition("CMD ")
    assert "--interval" in options and "--timeout" in options
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"] and len(argv) == 3
    assert "curl" not in argv[2] and "wget" not in argv[2]
    url = f"http://127.0.0.1:{final.last('EXPOSE')}/healthz"
    assert url in argv[2]
    routes = {rule.rule for rule in create_app(settings).url_map.iter_rules()}
    assert "/healthz" in routes

    def exit_code(port: int) -> int:
        code = argv[2].replace(url, f"http://127.0.0.1:{port}/healthz")
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, timeout=30
        ).returncode

    port = probe_server.server_address[1]
    assert isinstance(port, int)
    _Probe.status = 200
    assert exit_code(port) == 0
    _Probe.status = 503
    try:
        assert exit_code(port) == 1
    finally:
        _Probe.status = 200
    assert exit_code(free_port()) == 1
