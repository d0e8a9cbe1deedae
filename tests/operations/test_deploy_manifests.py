"""deploy/compose.yaml, deploy/nginx/nginx.conf and deploy/kubernetes/ stay valid and true
to the service.

The same schema checks as ``.ci/run``'s "deploy manifests" step: every Kubernetes manifest
against the schemas ``kubernetes-validate`` ships (offline, strict; the ``dev`` extra
installs it: without it those tests skip, and fail under ``CI=true``), the kustomization's
output too where ``kubectl`` is installed, and the compose file against the Compose
specification's JSON schema vendored in ``deploy/schemas/``. Then what a schema cannot
see, each held against the real code: commands through the real click commands (the
rotation CronJob's and the compose file's "register a first client" run in process on a
temporary database), settings through ``Settings.from_env``, probes against the container
port, the grace period against the shutdown settings, the Dockerfile's user, nginx's
upstream against the compose replicas, and every ``TOKENDEALER_*`` name against the
settings the service reads.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.cli import CLI, cli_env
from tests.support.environment import IN_CI
from tokendealer.cli import cli as tokendealer_cli
from tokendealer.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_SCHEMA = DEPLOY / "schemas" / "compose-spec.json"
NGINX = DEPLOY / "nginx" / "nginx.conf"
KUBERNETES = DEPLOY / "kubernetes"
KUSTOMIZATION = KUBERNETES / "kustomization.yaml"
SECRET_EXAMPLE = KUBERNETES / "secret.example.yaml"
CI_RUN = ROOT / ".ci" / "run"
README = ROOT / "README.rst"
DOCKERFILE = (ROOT / "Dockerfile").read_text()

#: The Kubernetes version whose schemas the manifests are held to (.ci/run uses the same).
KUBERNETES_VERSION = "1.31.0"
#: Every file of deploy/kubernetes/ but the kustomization (not a Kubernetes resource).
MANIFESTS = sorted(path for path in KUBERNETES.glob("*.yaml") if path != KUSTOMIZATION)

#: The image's user (Dockerfile ``USER uid:gid``) and keys directory.
_USER = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE, re.MULTILINE)
assert _USER is not None
IMAGE_UID, IMAGE_GID = int(_USER.group(1)), int(_USER.group(2))
_KEYS_DIR = re.search(r"TOKENDEALER_KEYS_DIR=(\S+)", DOCKERFILE)
assert _KEYS_DIR is not None
IMAGE_KEYS_DIR = _KEYS_DIR.group(1)


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _resources() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in MANIFESTS:
        for doc in _documents(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


RESOURCES = _resources()
DEPLOYMENT = RESOURCES["Deployment", "tokendealer"]
CRONJOB = RESOURCES["CronJob", "tokendealer-rotate-keys"]
CONFIGMAP = RESOURCES["ConfigMap", "tokendealer"]
SECRET = RESOURCES["Secret", "tokendealer"]
SERVICE = RESOURCES["Service", "tokendealer"]
PDB = RESOURCES["PodDisruptionBudget", "tokendealer"]
#: The pod templates of the servers and of the rotation job.
POD_TEMPLATES = {
    "deployment": DEPLOYMENT["spec"]["template"],
    "cronjob": CRONJOB["spec"]["jobTemplate"]["spec"]["template"],
}


def _serve_options(command: list[str]) -> dict[str, Any]:
    """``tokendealer serve ...`` parsed by the real click command: its options."""
    assert command[:2] == ["tokendealer", "serve"], command
    with tokendealer_cli.commands["serve"].make_context("serve", command[2:]) as ctx:
        return dict(ctx.params)


# -- Kubernetes: the schemas --------------------------------------------------------------


def kubernetes_validate() -> ModuleType:
    try:
        import kubernetes_validate as module
    except ImportError:
        reason = "kubernetes-validate is not installed (pip install -e '.[dev]')"
        if IN_CI:
            pytest.fail(f"{reason}; .ci/run installs the dev extra")
        pytest.skip(f"{reason}; set CI=true to make this a failure")
    return module


def _validate(documents: list[dict[str, Any]]) -> None:
    """Each document against its kind's schema; a kind without one is an error too
    (the command line only warns)."""
    validator = kubernetes_validate()
    for doc in documents:
        validator.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_kubernetes_manifest_matches_the_schemas(path: Path) -> None:
    _validate(_documents(path))


def test_the_kubernetes_schema_check_fails_on_a_mistake() -> None:
    """Strict: a misspelt field fails, and so does a kind the schemas lack."""
    validator = kubernetes_validate()
    misspelt = copy.deepcopy(DEPLOYMENT)
    container = misspelt["spec"]["template"]["spec"]["containers"][0]
    container["readinessprobe"] = container.pop("readinessProbe")
    with pytest.raises(validator.ValidationError):
        validator.validate(misspelt, KUBERNETES_VERSION, strict=True)
    unknown = dict(CONFIGMAP, kind="ConfigMapp")
    with pytest.raises(validator.SchemaNotFoundError):
        validator.validate(unknown, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert {KUBERNETES / name for name in listed} == set(MANIFESTS) - {SECRET_EXAMPLE}
    images = {image["name"] for image in kustomization["images"]}
    used = {
        container["image"]
        for template in POD_TEMPLATES.values()
        for container in template["spec"]["containers"]
    }
    assert used == images


def test_the_kustomization_builds_to_valid_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` not checked")
    built = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    documents = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    assert {(doc["kind"], doc["metadata"]["name"]) for doc in documents} == set(RESOURCES) - {
        ("Secret", "tokendealer")
    }
    _validate(documents)


# -- Kubernetes: the servers ---------------------------------------------------------------


def _container(template: dict[str, Any]) -> dict[str, Any]:
    containers = template["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _environment(container: dict[str, Any]) -> dict[str, str]:
    """The container's variables as the kubelet gives them: envFrom the ConfigMap of this
    directory, then env; a secretKeyRef takes the example Secret's value."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(RESOURCES["ConfigMap", source["configMapRef"]["name"]]["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
            continue
        ref = variable["valueFrom"]["secretKeyRef"]
        env[variable["name"]] = RESOURCES["Secret", ref["name"]]["stringData"][ref["key"]]
    return env


def _settings(env: dict[str, str]) -> Settings:
    """The service's own reading of these variables (a bad value raises ConfigError); the
    key-encryption key file the Secret would mount is a temporary one here."""
    path = env.get("TOKENDEALER_KEY_ENCRYPTION_KEY_FILE")
    if path and not Path(path).exists():
        with tempfile.NamedTemporaryFile("w", suffix=".kek", delete=False) as kek:
            kek.write(base64.b64encode(os.urandom(32)).decode() + "\n")
        env = {**env, "TOKENDEALER_KEY_ENCRYPTION_KEY_FILE": kek.name}
    return Settings.from_env(env)


def _port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    assert isinstance(number, int)
    return number


def test_deployment_runs_three_replicas_of_serve_on_its_container_port() -> None:
    assert DEPLOYMENT["spec"]["replicas"] == 3
    container = _container(DEPLOYMENT["spec"]["template"])
    options = _serve_options(container["command"])
    assert options["host"] == "0.0.0.0"  # noqa: S104  # reachable from outside the pod
    assert [p["containerPort"] for p in container["ports"]] == [options["port"]]
    annotations = DEPLOYMENT["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(options["port"])
    assert annotations["prometheus.io/path"] == "/metrics"


def test_probes_ask_readyz_and_healthz_on_the_serve_port() -> None:
    """Readiness is /readyz (out of the Service during a database outage or a drain);
    liveness and startup are /healthz (never a restart for a database outage)."""
    container = _container(DEPLOYMENT["spec"]["template"])
    port = _serve_options(container["command"])["port"]
    paths = {}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert _port(container, get["port"]) == port, probe
        paths[probe] = get["path"]
    assert paths == {
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
    }


def test_grace_period_outlasts_the_shutdown_delay_and_timeout() -> None:
    """terminationGracePeriodSeconds > TOKENDEALER_SHUTDOWN_DELAY + _TIMEOUT, as the pod's
    own environment sets them, plus a few seconds (README "Stopping")."""
    container = _container(DEPLOYMENT["spec"]["template"])
    settings = _settings(_environment(container))
    assert settings.shutdown_delay > 0, "behind a load balancer the delay is needed"
    grace = DEPLOYMENT["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= settings.shutdown_delay + settings.shutdown_timeout + 5
    assert "preStop" not in container.get("lifecycle", {})


def test_the_servers_settings_are_valid_and_name_the_database_key_store() -> None:
    env = _environment(_container(DEPLOYMENT["spec"]["template"]))
    settings = _settings(env)
    assert settings.database_url.startswith("postgresql://")
    assert settings.redis_url is not None
    assert settings.trusted_proxies == 1
    assert settings.session_secret is not None  # the same on every replica
    assert env["TOKENDEALER_KEY_STORE"] == "database"


@pytest.mark.parametrize("which", POD_TEMPLATES)
def test_pods_run_restricted(which: str) -> None:
    """Non-root as the image's user, read-only root, no escalation, no capability,
    RuntimeDefault seccomp, with an emptyDir for /tmp (prometheus' multiprocess files)."""
    template = POD_TEMPLATES[which]
    pod = template["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"]) == (IMAGE_UID, IMAGE_GID)
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert template["spec"]["automountServiceAccountToken"] is False
    container = _container(template)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    volumes = {volume["name"]: volume for volume in template["spec"]["volumes"]}
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]  # noqa: S108
    assert "emptyDir" in volumes[tmp["name"]]
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}


@pytest.mark.parametrize("which", POD_TEMPLATES)
def test_the_key_encryption_key_is_a_file_only_the_service_reads(which: str) -> None:
    """TOKENDEALER_KEY_ENCRYPTION_KEY_FILE names the file the Secret volume mounts, 0400
    (0440 with the pod's fsGroup, the image's group); no keys volume, no other secret."""
    template = POD_TEMPLATES[which]
    container = _container(template)
    path = Path(_environment(container)["TOKENDEALER_KEY_ENCRYPTION_KEY_FILE"])
    assert _environment(container)["TOKENDEALER_KEY_STORE"] == "database"
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) in path.parents]
    assert mount["readOnly"] is True
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]
    assert secret["defaultMode"] == 0o400
    assert template["spec"]["securityContext"]["fsGroup"] == IMAGE_GID
    (item,) = secret["items"]
    assert Path(mount["mountPath"]) / item["path"] == path
    assert item["key"] in RESOURCES["Secret", secret["secretName"]]["stringData"]
    assert not any(m["mountPath"].startswith(IMAGE_KEYS_DIR) for m in container["volumeMounts"])


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_service_and_budget_select_the_servers_and_not_the_rotation_job() -> None:
    servers = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    job = POD_TEMPLATES["cronjob"]["metadata"]["labels"]
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"] == SERVICE["spec"]["selector"]
    for selector in (SERVICE["spec"]["selector"], PDB["spec"]["selector"]["matchLabels"]):
        assert _matches(selector, servers)
        assert not _matches(selector, job)
    container = _container(DEPLOYMENT["spec"]["template"])
    (port,) = SERVICE["spec"]["ports"]
    assert _port(container, port["targetPort"]) == _serve_options(container["command"])["port"]
    budget = PDB["spec"]
    assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable") == 2
    spread = DEPLOYMENT["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert any(c["topologyKey"] == "kubernetes.io/hostname" for c in spread)
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"] == servers


def test_every_reference_names_a_resource_of_this_directory() -> None:
    for template in POD_TEMPLATES.values():
        container = _container(template)
        for source in container["envFrom"]:
            assert ("ConfigMap", source["configMapRef"]["name"]) in RESOURCES
        _environment(container)  # each secretKeyRef resolves against the example
        for volume in template["spec"]["volumes"]:
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in RESOURCES


def test_the_secret_example_holds_placeholders_only() -> None:
    for value in SECRET["stringData"].values():
        assert "REPLACE-WITH" in value


# -- Kubernetes: the rotation CronJob -----------------------------------------------------


def _script_commands(command: list[str]) -> list[list[str]]:
    """``sh -c "tokendealer A && tokendealer B"`` as its commands (and nothing else)."""
    assert command[:2] == ["sh", "-c"] and len(command) == 3, command
    steps = [shlex.split(step) for step in command[2].split("&&")]
    for words in steps:
        assert words[0] == "tokendealer", words
        assert all(re.fullmatch(r"[\w.=/-]+", word) for word in words), words
    return steps


def test_rotation_cronjob_runs_rotate_then_prune_one_at_a_time() -> None:
    spec = CRONJOB["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    steps = _script_commands(_container(POD_TEMPLATES["cronjob"])["command"])
    assert [words[1:3] for words in steps] == [["keys", "rotate"], ["keys", "prune"]]


def test_rotation_cronjob_command_works_with_its_own_environment(tmp_path: Path) -> None:
    """The job's commands, word for word, run by the real CLI with the job's environment
    (the ConfigMap, the database key store): only the database URL, the key-encryption
    key's file and the keys directory point into this test's directory. After ``init``,
    rotate publishes a next key and prune exits 0."""
    kek = tmp_path / "kek"
    kek.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    kek.chmod(0o400)
    env = _environment(_container(POD_TEMPLATES["cronjob"]))
    env.update(
        TOKENDEALER_DATABASE_URL=f"sqlite:///{tmp_path / 'td.db'}",
        TOKENDEALER_KEY_ENCRYPTION_KEY_FILE=str(kek),
        TOKENDEALER_KEYS_DIR=str(tmp_path / "keys"),
    )
    cli = CLI(cli_env(tmp_path, **env), cwd=tmp_path)
    cli.ok("init")
    for words in _script_commands(_container(POD_TEMPLATES["cronjob"])["command"]):
        cli.ok(*words[1:])
    states = sorted(key["state"] for key in cli.ok("keys", "list", "--json").json())
    assert states == ["active", "next"]


# -- compose ------------------------------------------------------------------------------

COMPOSE_DATA: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE_DATA["services"]
#: The dealer replicas: the services built from the repository's Dockerfile.
DEALERS = {name: service for name, service in SERVICES.items() if "build" in service}
HEADER = "".join(
    line[1:].strip() + "\n" for line in COMPOSE.read_text().splitlines() if line.startswith("#")
)


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in jsonschema.Draft7Validator(schema).iter_errors(COMPOSE_DATA)
    ]
    assert errors == []


def test_the_compose_schema_check_fails_on_a_mistake() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    broken = copy.deepcopy(COMPOSE_DATA)
    broken["services"]["db"]["helthcheck"] = broken["services"]["db"].pop("healthcheck")
    assert not jsonschema.Draft7Validator(schema).is_valid(broken)


def _compose_environment(service: dict[str, Any]) -> dict[str, str]:
    """``environment`` with ``${VAR:-default}`` as its default (the only form used)."""
    env = {}
    for name, value in service["environment"].items():
        text = str(value)
        assert "$" not in re.sub(r"\$\{[A-Z_]+:-[^}]*\}", "", text), text
        env[name] = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)
    return env


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match is not None, duration
    return int(match.group(1))


def test_two_or_more_replicas_share_keys_through_the_database_not_a_volume() -> None:
    """Every replica: KEY_STORE=database, the KEK as a compose secret, no volume on the
    keys directory and no volume shared with another replica."""
    assert len(DEALERS) >= 2
    mounted: list[str] = []
    for name, dealer in DEALERS.items():
        env = _compose_environment(dealer)
        assert env["TOKENDEALER_KEY_STORE"] == "database", name
        kek = Path(env["TOKENDEALER_KEY_ENCRYPTION_KEY_FILE"])
        assert kek.parent == Path("/run/secrets") and kek.name in dealer["secrets"], name
        assert "file" in COMPOSE_DATA["secrets"][kek.name]
        for volume in dealer.get("volumes", []):
            source, _, target = str(volume).partition(":")
            assert not target.startswith(IMAGE_KEYS_DIR), (name, volume)
            mounted.append(source)
    assert len(mounted) == len(set(mounted)), "a volume is shared between replicas"


def test_replicas_serve_behind_one_proxy_and_drain_within_the_grace_period() -> None:
    for name, dealer in DEALERS.items():
        env = _compose_environment(dealer)
        env["TOKENDEALER_DATABASE_URL"] = "postgresql://tokendealer@db:5432/tokendealer"
        settings = _settings(env)
        assert settings.trusted_proxies == 1, name
        assert settings.redis_url is not None and settings.shutdown_delay > 0
        grace = _seconds(dealer["stop_grace_period"])
        assert grace > settings.shutdown_delay + settings.shutdown_timeout, name
        assert dealer["read_only"] is True and "/tmp" in dealer["tmpfs"]  # noqa: S108


def test_replicas_wait_for_healthy_stores_and_check_their_own_readiness() -> None:
    for name, dealer in DEALERS.items():
        port = _serve_options(dealer["command"])["port"]
        test = dealer["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], name
        assert f"http://127.0.0.1:{port}/readyz" in test[3]
        for store in ("db", "redis"):
            assert dealer["depends_on"][store] == {"condition": "service_healthy"}
            assert "healthcheck" in SERVICES[store]
    assert "pg_isready" in SERVICES["db"]["healthcheck"]["test"]
    assert "db-data" in {str(v).partition(":")[0] for v in SERVICES["db"]["volumes"]}
    assert SERVICES["nginx"]["depends_on"] == {
        name: {"condition": "service_healthy"} for name in DEALERS
    }


def _git_ignored(path: Path) -> bool:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    checked = subprocess.run(
        [git, "check-ignore", "-q", "--no-index", str(path)], cwd=ROOT, check=False
    )
    return checked.returncode == 0


def _secret_files() -> set[Path]:
    """Every file the compose file reads secrets from: its secrets and env_files."""
    files = {COMPOSE.parent / spec["file"] for spec in COMPOSE_DATA["secrets"].values()}
    for service in SERVICES.values():
        files |= {COMPOSE.parent / env_file for env_file in service.get("env_file", [])}
    return {path.resolve() for path in files}


def test_secret_files_live_in_the_ignored_directory_the_header_fills() -> None:
    """The compose file's secrets and env_file are under deploy/secrets/, which git
    ignores, and the header's commands create exactly those files."""
    files = _secret_files()
    assert files and all(path.parent == DEPLOY / "secrets" for path in files)
    for path in files:
        assert _git_ignored(path), f"{path} is not ignored by git"
    assert not _git_ignored(DEPLOY / "secrets" / ".gitignore")
    created = {ROOT / name for name in re.findall(r"> (deploy/secrets/\S+)", HEADER)}
    assert created == files


def test_the_header_database_url_names_the_compose_database() -> None:
    (url,) = re.findall(r"TOKENDEALER_DATABASE_URL=(postgresql://\S+?)\\n", HEADER)
    match = re.fullmatch(r"postgresql://(\w+):%s@([\w-]+):5432/(\w+)", url)
    assert match is not None, url
    user, host, database = match.groups()
    db = SERVICES[host]["environment"]
    assert (user, database) == (db["POSTGRES_USER"], db["POSTGRES_DB"])
    assert "POSTGRES_PASSWORD_FILE" in db


def test_the_header_commands_start_it_and_register_a_first_client(tmp_path: Path) -> None:
    """The header's start command, and its register command run by the real CLI (the
    service it names is a replica) on a database made here."""
    assert "docker compose -f deploy/compose.yaml up -d --build\n" in HEADER
    (register,) = re.findall(r"docker compose -f deploy/compose\.yaml exec (.+)\n", HEADER)
    service, *words = shlex.split(register)
    assert service in DEALERS and words[:3] == ["tokendealer", "clients", "add"]
    cli = CLI(cli_env(tmp_path), cwd=tmp_path)
    cli.ok("init")
    assert cli.ok(*words[1:]).stdout.strip()


def test_the_issuer_is_the_address_nginx_publishes() -> None:
    (published,) = SERVICES["nginx"]["ports"]
    host_port, _, container_port = str(published).partition(":")
    for dealer in DEALERS.values():
        issuer = _compose_environment(dealer)["TOKENDEALER_ISSUER"]
        assert issuer == f"http://localhost:{host_port}"
    assert re.search(rf"^\s*listen {container_port};$", NGINX.read_text(), re.MULTILINE)


# -- nginx --------------------------------------------------------------------------------


def _nginx_block(text: str, opening: str) -> str:
    """The body of the block that ``opening`` (e.g. ``upstream tokendealer``) starts."""
    start = text.index(opening + " {") + len(opening) + 2
    depth, end = 1, start
    while depth:
        end += 1
        depth += {"{": 1, "}": -1}.get(text[end - 1], 0)
    return text[start : end - 1]


def _nginx_directives(body: str) -> list[list[str]]:
    code = "\n".join(line.split("#", 1)[0] for line in body.splitlines())
    return [statement.split() for statement in code.split(";") if statement.strip()]


NGINX_TEXT = NGINX.read_text()


def test_nginx_upstream_lists_exactly_the_compose_replicas() -> None:
    upstream = _nginx_directives(_nginx_block(NGINX_TEXT, "upstream tokendealer"))
    servers = [words[1:] for words in upstream if words[0] == "server"]
    expected = {
        f"{name}:{_serve_options(dealer['command'])['port']}" for name, dealer in DEALERS.items()
    }
    assert sorted(server[0] for server in servers) == sorted(expected)
    for server in servers:
        assert any(option.startswith("max_fails=") for option in server), server
        assert any(option.startswith("fail_timeout=") for option in server), server


def test_nginx_forwards_the_client_address_and_refuses_metrics() -> None:
    proxied = _nginx_directives(_nginx_block(NGINX_TEXT, "location /"))
    assert ["proxy_pass", "http://tokendealer"] in proxied
    assert ["proxy_set_header", "X-Forwarded-For", "$proxy_add_x_forwarded_for"] in proxied
    # A 503 (a database outage) must not mark every replica down: no http_503 here.
    (next_upstream,) = [words for words in proxied if words[0] == "proxy_next_upstream"]
    assert not any(word.startswith("http_") for word in next_upstream)
    assert _nginx_directives(_nginx_block(NGINX_TEXT, "location /metrics")) == [["deny", "all"]]


# -- names, CI, README --------------------------------------------------------------------


class _Recording(dict[str, str]):
    """An empty environment that remembers every name read from it."""

    def __init__(self) -> None:
        super().__init__()
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return super().__contains__(key)


def _settings_read() -> set[str]:
    env = _Recording()
    Settings.from_env(env)
    return {name for name in env.read if name.startswith("TOKENDEALER_")}


def _deploy_files() -> Iterator[Path]:
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and "schemas" not in path.parts and path.parent.name != "secrets":
            yield path


def test_every_setting_named_in_deploy_is_one_the_service_reads() -> None:
    """Each TOKENDEALER_* name in deploy/ is read by Settings.from_env: a misspelt
    variable would be silently ignored."""
    known = _settings_read()
    assert {"TOKENDEALER_ISSUER", "TOKENDEALER_SHUTDOWN_DELAY"} <= known
    unknown = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in _deploy_files()
        for name in re.findall(r"TOKENDEALER_[A-Z0-9_]*[A-Z0-9]", path.read_text())
        if name not in known
    }
    assert unknown == set()


def test_ci_runs_the_same_checks_before_the_tests() -> None:
    ci = CI_RUN.read_text()
    assert ci.index('echo "== deploy manifests"') < ci.index('echo "== tests')
    step = ci[ci.index('echo "== deploy manifests"') : ci.index('echo "== tests')]
    assert f"kubernetes-validate --strict --quiet -k {KUBERNETES_VERSION}" in step
    assert "deploy/schemas/compose-spec.json" in step and "deploy/compose.yaml" in step
    assert "kubectl kustomize deploy/kubernetes" in step


#: The compose header's shell commands (the README shows the same).
COMMANDS = ("chmod ", "head -c ", "printf ", "docker compose ")


def test_readme_deploying_section_shows_the_compose_commands_and_the_secret() -> None:
    """README "Deploying": the compose file's commands, word for word, and a kubectl
    command creating the Secret with every key the example (and so the pods) read."""
    readme = README.read_text()
    start = readme.index("Deploying\n---------\n")
    following = re.compile(r"\n[^\n]+\n-{4,}\n").search(readme, start + 20)
    section = readme[start : following.start() if following else None]
    for path in ("deploy/compose.yaml", "deploy/kubernetes/", "deploy/nginx/nginx.conf"):
        assert path in section, path
    commands = [line for line in HEADER.splitlines() if line.startswith(COMMANDS)]
    assert len(commands) >= 5
    for command in commands:
        assert command in section, f"README lacks the compose file's command {command!r}"
    keys = set(re.findall(r"--from-(?:literal|file)=([\w-]+)=", section))
    assert keys == set(SECRET["stringData"])
    assert f"kubectl create secret generic {SECRET['metadata']['name']}" in section
