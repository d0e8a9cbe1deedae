"""openapi.yaml, and checking HTTP exchanges against it.

``SpecChecker`` validates a request body or a response (status, headers, media type, JSON
body) against the operation the document declares for a path and method, resolving the
document's ``$ref`` through a registry; ``exchange`` (and ``call``, its status and body)
makes a request through the Quart test client and checks its response. A mismatch
raises ``Mismatch``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from openapi_schema_validator import OAS31Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from tests.support.environment import QuartClient

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
SPEC_URI = "urn:tokendealer:openapi"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    return spec


def _escape(segment: str) -> str:
    """RFC 6901 §3: one JSON Pointer reference token."""
    return segment.replace("~", "~0").replace("/", "~1")


def _unescape(segment: str) -> str:
    return segment.replace("~1", "/").replace("~0", "~")


def _template_pattern(template: str, parameter: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{[^}]+\\\}", parameter, re.escape(template)) + "$")


class Mismatch(AssertionError):
    """A response (or request) does not match what the spec declares."""


class SpecChecker:
    """Checks HTTP exchanges against the spec, resolving ``$ref`` through a registry.

    Schemas are validated by JSON Pointer into the whole document (``{"$ref":
    "urn:...#/paths/..."}``), so the ``#/components/...`` references inside them resolve
    against the spec itself.

    A path is matched to a literal template first, then to a template whose parameters
    are one path segment each (OpenAPI: a path parameter holds no ``/``), so that
    ``/clients/x/disable`` is not taken for ``/clients/{client_id}``; last, to one whose
    parameters span segments (``{issuer_path}``, described as such).
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.registry: Registry[Any] = Registry().with_resource(
            SPEC_URI, DRAFT202012.create_resource(spec)
        )
        self.segment_templates = [
            (template, _template_pattern(template, "[^/]+")) for template in spec["paths"]
        ]
        self.spanning_templates = [
            (template, _template_pattern(template, ".+")) for template in spec["paths"]
        ]

    def node(self, pointer: str) -> Any:
        node: Any = self.spec
        for segment in pointer.lstrip("/").split("/"):
            node = node[_unescape(segment)]
        return node

    def follow(self, pointer: str) -> str:
        """The pointer of the object at ``pointer``, after following any ``$ref``."""
        node = self.node(pointer)
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            assert ref.startswith("#/"), f"only local references are used, got {ref}"
            pointer = ref[1:]
            node = self.node(pointer)
        return pointer

    def validate(self, schema_pointer: str, instance: Any, what: str) -> None:
        validator = OAS31Validator(
            {"$ref": f"{SPEC_URI}#{schema_pointer}"},
            registry=self.registry,
            format_checker=OAS31Validator.FORMAT_CHECKER,
        )
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
        if errors:
            details = "; ".join(f"{list(e.path)}: {e.message}" for e in errors)
            raise Mismatch(f"{what} does not match {schema_pointer}: {details}")

    def template(self, path: str) -> str:
        """The path template of the spec that ``path`` (without query) falls under."""
        if path in self.spec["paths"]:
            return path
        for templates in (self.segment_templates, self.spanning_templates):
            matching = [template for template, pattern in templates if pattern.match(path)]
            if matching:
                return matching[0]
        raise Mismatch(f"{path} is not described")

    def operation(self, path: str, method: str) -> str:
        """The pointer of the operation serving ``method path``."""
        operation = f"/paths/{_escape(self.template(path))}/{method.lower()}"
        try:
            self.node(operation)
        except KeyError:
            raise Mismatch(f"{method} {path} is not described") from None
        return operation

    def check_request(self, path: str, method: str, media_type: str, body: Any) -> None:
        operation = self.operation(path, method)
        try:
            request_body = self.follow(f"{operation}/requestBody")
        except KeyError:
            raise Mismatch(f"{method} {path} declares no request body") from None
        content = self.node(request_body)["content"]
        if media_type not in content:
            raise Mismatch(f"{method} {path} does not declare a {media_type} body")
        pointer = f"{request_body}/content/{_escape(media_type)}"
        self.validate(f"{pointer}/schema", body, f"{method} {path} request")

    def check_response(
        self,
        path: str,
        method: str,
        status: int,
        headers: Mapping[str, str],
        media_type: str,
        body: bytes,
    ) -> Any:
        """Assert the exchange matches the spec; return the parsed JSON body (or None)."""
        operation = self.operation(path, method)
        responses = self.node(f"{operation}/responses")
        key = str(status) if str(status) in responses else "default"
        if key not in responses:
            raise Mismatch(f"{method} {path} does not declare status {status}")
        response = self.follow(f"{operation}/responses/{key}")
        what = f"{method} {path} -> {status}"

        declared_headers = self.node(response).get("headers", {})
        for name in declared_headers:
            header = self.node(self.follow(f"{response}/headers/{_escape(name)}"))
            value = headers.get(name)
            if value is None:
                if header.get("required", False):
                    raise Mismatch(f"{what}: required header {name} is missing")
                continue
            header_pointer = self.follow(f"{response}/headers/{_escape(name)}")
            self.validate(f"{header_pointer}/schema", value, f"{what} header {name}")

        content = self.node(response).get("content")
        if content is None:
            if body:
                raise Mismatch(f"{what}: declares no content but has a body")
            return None
        if media_type not in content:
            raise Mismatch(f"{what}: {media_type!r} is not one of {sorted(content)}")
        if not (media_type == "application/json" or media_type.endswith("+json")):
            raise Mismatch(f"{what}: only JSON bodies are checked, got {media_type}")
        try:
            instance = json.loads(body)
        except ValueError:
            raise Mismatch(f"{what}: the body is not JSON") from None
        self.validate(f"{response}/content/{_escape(media_type)}/schema", instance, what)
        return instance


@dataclass(frozen=True)
class Checked:
    """A response that matches the spec: its status, parsed JSON body (or None) and
    headers."""

    status: int
    body: Any
    headers: Mapping[str, str]


async def exchange(
    checker: SpecChecker, client: QuartClient, method: str, path: str, **kwargs: Any
) -> Checked:
    """Make a request through the test client (``path`` may carry a query string); check
    the response against the spec."""
    response = await client.open(path, method=method, **kwargs)
    body = await response.get_data()
    parsed = checker.check_response(
        path.partition("?")[0],
        method,
        response.status_code,
        response.headers,
        response.mimetype or "",
        body,
    )
    return Checked(response.status_code, parsed, response.headers)


async def call(
    checker: SpecChecker, client: QuartClient, method: str, path: str, **kwargs: Any
) -> tuple[int, Any]:
    """``exchange``'s status and parsed body."""
    checked = await exchange(checker, client, method, path, **kwargs)
    return checked.status, checked.body
