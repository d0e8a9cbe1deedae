"""Declarative clients: a file listing clients is made true (``tokendealer apply``).

The file is YAML, or JSON (a ``.json`` file is read with JSON's own rules: its numbers,
its string escapes, its syntax errors), and is either a list of clients or a mapping with
the one key ``clients`` holding that list::

    clients:
      - client_id: billing
        scopes: [invoices:read, invoices:write]
        audiences: [https://invoices.internal]
        ttl: 600
        description: Billing batch jobs (team-payments)
        claims: {tenant: acme, tier: 2}
        rate_limit: 60/minute     # its own limit (none: TOKENDEALER_RATE_LIMIT)
        rate_limit_mode: monitor  # over it: logged, not refused (default: enforce)
      - client_id: reports        # no scopes, no audiences, the default TTL
      - client_id: worker         # signs its own assertions (RFC 7523): no secret
        auth_method: private_key_jwt
        jwks_uri: https://worker.internal/.well-known/jwks.json

Each client has ``client_id`` (required; the name ``clients show --json`` and the admin
API use) and any of ``scopes`` and ``audiences`` (lists of strings), ``ttl`` (seconds, or
``null`` for the service's default), ``description``, ``claims`` (a mapping of claim
names to JSON values, copied into each of the client's tokens), ``rate_limit`` (the
client's own limit, ``COUNT/UNIT``, or ``null`` for the service's) and
``rate_limit_mode`` (``enforce`` or ``monitor``). The file is the whole truth for these
fields: one left out means its empty value (no scopes, no audiences, the default TTL, no
description, no claims, the service's rate limit, enforced), not "keep what the client
has". Whether a client is disabled, and its secret, are not the file's business:
``apply`` leaves them as they are.

``auth_method`` says how the client authenticates: ``client_secret`` (left out: the
default) or ``private_key_jwt``, which has one of ``jwks_uri`` (where it publishes its
public keys) and ``jwks`` (the keys: a mapping holding a JWK Set, or one JWK). A secret
client created is given a secret, shown once; a ``private_key_jwt`` client has none,
and its keys are replaced when the file gives others. A client keeps the method it was
registered with: a file giving another one for an existing client is refused.

``read``/``parse`` check the whole file before anything is changed (unknown keys, types,
duplicate ids, and every value through the admin service's own checks), and every refusal
names the file and the line (``clients.yaml:7: ...``). ``plan`` compares the file with
the store; ``apply`` carries the plan out through ``tokendealer.admin.clients``, so each
change is its own audited transaction::

    wanted = read(Path("clients.yaml"))
    planned = await plan(store, wanted, prune=False)
    applied = await apply(store, planned, actor="cli:ops")
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from tokendealer.admin import clients
from tokendealer.admin.clients import Authentication
from tokendealer.admin.errors import AdminError, Invalid
from tokendealer.library.jwk import thumbprint_kid
from tokendealer.protocol.claims import MAX_DEPTH
from tokendealer.protocol.clients import CLIENT_SECRET, PRIVATE_KEY_JWT, Client
from tokendealer.protocol.rates import ENFORCE
from tokendealer.settings import Rate
from tokendealer.store.base import Store, StoreError

T = TypeVar("T")

#: How a client in the file authenticates: its method and, for ``private_key_jwt``,
#: where its keys are or the keys.
AUTHENTICATION = ("auth_method", "jwks_uri", "jwks")
#: The methods a file may give (a federated client is registered otherwise).
METHODS = (CLIENT_SECRET, PRIVATE_KEY_JWT)

#: The keys of a client in the file, in the order ``clients show --json`` prints them: the
#: id, the fields of its policy (``clients.POLICY``) and how it authenticates.
FIELDS = (
    "client_id",
    "description",
    "scopes",
    "audiences",
    "ttl",
    "claims",
    "rate_limit",
    "rate_limit_mode",
    *AUTHENTICATION,
)
#: The largest file read: ample for thousands of clients.
MAX_FILE_SIZE = 4 * 1024 * 1024
#: The most YAML nodes the claims of one client may hold, aliases followed: ample for
#: claims within their size bound, and a stop for an alias bomb.
MAX_CLAIM_NODES = 4096
#: The same for a client's keys (a key set is at most 16 KiB as JSON).
MAX_KEY_NODES = 4096
_MERGE = "tag:yaml.org,2002:merge"
_YAML_TAG = "tag:yaml.org,2002:"
#: The tags of the scalars a file may hold, JSON's: YAML's others (a date, binary data)
#: are not JSON values, and a plain scalar that looks like one is most often meant as a
#: string.
_JSON_TAGS = frozenset(_YAML_TAG + name for name in ("str", "int", "float", "bool", "null"))
_SHAPE = "a list of clients, or a mapping with the one key 'clients' holding that list"


class FileError(Invalid):
    """The file is not a valid list of clients; the message names the file and the line."""


@dataclass(frozen=True)
class Wanted:
    """One client as the file states it, checked and normalised as the admin service
    stores it (scopes and audiences without repeats, the description stripped)."""

    client_id: str
    scopes: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    ttl: int | None = None
    description: str = ""
    claims: Mapping[str, Any] = field(default_factory=dict)
    rate_limit: Rate | None = None
    rate_limit_mode: str = ENFORCE
    auth_method: str = CLIENT_SECRET
    #: A ``private_key_jwt`` client's key URL, or its keys as the admin service stores
    #: them (a JWK Set, JSON text).
    jwks_uri: str | None = None
    jwks: str | None = None
    #: Where the client starts in the file (1-based), and the file's name.
    line: int = 0
    file: str = ""

    def differences(self, client: Client) -> dict[str, dict[str, Any]]:
        """Field -> ``{"from": registered, "to": wanted}``, as ``client.update`` records;
        ``keys`` (their URL, or their kids) when a ``private_key_jwt`` client's keys
        differ."""
        changes = clients.differences(client, self)
        if client.jwks_uri != self.jwks_uri or _key_set(client.jwks) != _key_set(self.jwks):
            changes["keys"] = _keys_change(client, self)
        return changes

    def policy(self) -> dict[str, Any]:
        """The fields of ``clients.POLICY``, as ``clients.register`` and ``update`` take them."""
        return {name: getattr(self, name) for name in clients.POLICY}

    def authentication(self) -> Authentication:
        """How the client authenticates, as ``clients.register`` and ``update`` take it."""
        return Authentication(self.auth_method, jwks_uri=self.jwks_uri, jwks=self.jwks)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file else f"line {self.line}"


def _key_set(text: str | None) -> Any:
    """A stored key set as JSON reads it: two spellings of the same keys are equal."""
    return None if text is None else json.loads(text)


def _keys_change(current: Client, wanted: Wanted) -> dict[str, list[str]]:
    """The keys' URL, or their kids (a key without one: its RFC 7638 thumbprint), before
    and after; with the thumbprints too when the kids alone would read the same."""
    before, after = _keys_shown(current, False), _keys_shown(wanted, False)
    if before == after:
        before, after = _keys_shown(current, True), _keys_shown(wanted, True)
    return {"from": before, "to": after}


def _keys_shown(holder: Client | Wanted, thumbprints: bool) -> list[str]:
    if holder.jwks_uri is not None:
        return [_printable(holder.jwks_uri)]
    shown = []
    for key in (_key_set(holder.jwks) or {}).get("keys", []):
        try:
            thumbprint = thumbprint_kid(key)
        except (KeyError, TypeError):  # not a key of this dealer's kinds
            thumbprint = "?"
        kid = key.get("kid")
        if kid is None:
            shown.append(thumbprint)
        else:
            kid = _printable(str(kid))
            shown.append(f"{kid} ({thumbprint})" if thumbprints else kid)
    return shown


def _printable(text: str) -> str:
    """``text`` as a line may show it: a control character escaped (JSON's way)."""
    return text if text.isprintable() else json.dumps(text)


@dataclass(frozen=True)
class Action:
    kind: Literal["create", "update", "remove"]
    client_id: str
    #: What the file wants (``None`` for a removal).
    wanted: Wanted | None = None
    #: For an update: field -> ``{"from": ..., "to": ...}``.
    changes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: For an update: the client as registered when the plan was made; the update is
    #: written only if it still is (``clients.update``'s ``previous``).
    registered: Client | None = None


def _count(actions: Sequence[Action], kind: str) -> int:
    return sum(1 for action in actions if action.kind == kind)


@dataclass(frozen=True)
class Plan:
    """What ``apply`` would do: creations first, then updates, then removals (the one
    change that cannot be undone comes last)."""

    actions: tuple[Action, ...]
    #: Listed clients that already are as the file says.
    unchanged: tuple[str, ...]
    #: Registered clients the file does not list, kept (the plan was made without prune).
    unlisted: tuple[str, ...]

    def count(self, kind: str) -> int:
        return _count(self.actions, kind)


@dataclass(frozen=True)
class Applied:
    """What ``apply`` did, in order, and the new clients' secrets (shown once, never
    recorded). ``failed`` is the change that was refused, with ``error`` saying why: the
    changes before it stand, none after it was attempted."""

    done: tuple[Action, ...]
    secrets: Mapping[str, str]
    failed: Action | None = None
    error: str | None = None

    def count(self, kind: str) -> int:
        return _count(self.done, kind)


# -- reading the file ----------------------------------------------------------------------


def read(path: Path) -> tuple[Wanted, ...]:
    """The clients a file lists, checked; ``FileError`` naming the line if it is bad.

    Only a regular file of at most ``MAX_FILE_SIZE`` bytes is read (a FIFO would wait for
    a writer, a device such as /dev/zero never ends)."""
    not_regular = FileError(f"{path} is not a regular file")
    if not stat.S_ISREG(os.stat(path).st_mode):  # a device is not even opened
        raise not_regular
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    with os.fdopen(os.open(path, flags), "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):  # replaced since
            raise not_regular
        data = file.read(MAX_FILE_SIZE + 1)
    if len(data) > MAX_FILE_SIZE:
        raise FileError(f"{path} is larger than {MAX_FILE_SIZE // (1024 * 1024)} MiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise FileError(f"{path}:{line}: not UTF-8 text") from None
    return parse(text, str(path), json_syntax=path.suffix.lower() == ".json")


def parse(text: str, name: str = "<clients>", *, json_syntax: bool = False) -> tuple[Wanted, ...]:
    """The clients ``text`` lists, checked (see the module's docstring for the shape).

    ``json_syntax``: the text is JSON, read with JSON's rules; its lines are still found
    through YAML's composer, which reads valid JSON as the same tree (but for what YAML
    refuses that JSON takes, such as a key of more than 1024 characters or a control
    character: such a file is read without its lines, each refusal naming line 1).
    """
    try:
        return _Document(text, name, json_syntax).clients()
    except RecursionError:
        raise FileError(f"{name}: nested too deeply") from None


class _Parsed(yaml.ScalarNode):
    """A scalar of a JSON file read without YAML's composer: its value, at line 1."""

    def __init__(self, value: Any, mark: yaml.Mark) -> None:
        super().__init__(_YAML_TAG + "str", "", mark, mark)
        self.parsed = value


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its pairs, in order, a key given twice included."""


class _Document:
    def __init__(self, text: str, name: str, json_syntax: bool) -> None:
        self.parsed: Any = None
        if json_syntax:
            try:
                self.parsed = json.loads(text, object_pairs_hook=_Pairs)
            except json.JSONDecodeError as exc:
                raise FileError(f"{name}:{exc.lineno}: {exc.msg} (column {exc.colno})") from None
            # Valid JSON has tabs only between tokens, where YAML refuses them; the same
            # length, so the positions of the tokens stay those of the file.
            text = text.replace("\t", " ")
        self.text = text
        self.name = name
        self.json_syntax = json_syntax
        self.constructor = yaml.constructor.SafeConstructor()

    def fail(self, node: yaml.Node | int, message: str) -> FileError:
        line = node if isinstance(node, int) else node.start_mark.line + 1
        return FileError(f"{self.name}:{line}: {message}")

    def clients(self) -> tuple[Wanted, ...]:
        try:
            root = self.compose()
            wanted = [self.client(node) for node in self.entries(root)]
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            context = exc.context
            if context and exc.context_mark and mark and exc.context_mark.line != mark.line:
                context += f" started at line {exc.context_mark.line + 1}"
            what = ", ".join(filter(None, (context, exc.problem)))
            raise self.fail(mark.line + 1 if mark else 1, " ".join(what.split())) from None
        except yaml.reader.ReaderError as exc:
            line = self.text.count("\n", 0, exc.position) + 1
            raise self.fail(line, f"character #x{exc.character:04x} is not allowed") from None
        first: dict[str, int] = {}
        for client in wanted:
            if client.client_id in first:
                raise self.fail(
                    client.line,
                    f"client_id {client.client_id!r} is listed twice "
                    f"(first at line {first[client.client_id]})",
                )
            first[client.client_id] = client.line
        return tuple(wanted)

    def compose(self) -> yaml.Node | None:
        """The file's tree, each node at its line; a JSON file that YAML refuses (it was
        read as JSON already) is the tree of its value, every node at line 1."""
        try:
            return yaml.compose(self.text, Loader=yaml.SafeLoader)
        except (yaml.MarkedYAMLError, yaml.reader.ReaderError):
            if not self.json_syntax:
                raise
            return _node(self.parsed, yaml.Mark(self.name, 0, 0, 0, None, 0))

    def entries(self, root: yaml.Node | None) -> list[yaml.Node]:
        if root is None:
            raise self.fail(1, f"the file is empty: expected {_SHAPE}")
        if isinstance(root, yaml.MappingNode):
            pairs = self.pairs(root)
            for key, (key_node, _) in pairs.items():
                if key != "clients":
                    raise self.fail(key_node, f"unknown key {key!r}: expected {_SHAPE}")
            if "clients" not in pairs:
                raise self.fail(root, f"no 'clients' key: expected {_SHAPE}")
            root = pairs["clients"][1]
        if not isinstance(root, yaml.SequenceNode):
            raise self.fail(root, f"expected {_SHAPE}")
        return list(root.value)

    def pairs(self, node: yaml.MappingNode) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """The mapping's keys (strings, each given once) -> (key node, value node). YAML
        merge keys (``<<: *defaults``) are honoured, the mapping's own keys winning."""
        own = {id(key) for key, _ in node.value if key.tag != _MERGE}
        self.constructor.flatten_mapping(node)
        pairs: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            refusal = "a key must be a string"
            key = self.scalar(key_node, refusal) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise self.fail(key_node, refusal)
            earlier = pairs.get(key)
            if earlier is not None and id(earlier[0]) in own and id(key_node) in own:
                line = earlier[0].start_mark.line + 1
                raise self.fail(key_node, f"{key!r} is given twice (first at line {line})")
            pairs[key] = (key_node, value_node)
        return pairs

    def scalar(self, node: yaml.ScalarNode, refusal: str) -> Any:
        """The scalar's value: a string, a number, a boolean or None. A scalar YAML reads
        as something else (a date, binary data), or cannot read as it is tagged (``!!int
        abc``), is ``refusal`` with the reason."""
        if isinstance(node, _Parsed):
            return node.parsed
        if self.json_syntax:  # the token as JSON reads it (YAML 1.1 differs: 1e3, "\ud83d")
            return json.loads(self.text[node.start_mark.index : node.end_mark.index])
        shown = repr(node.value) if len(node.value) <= 40 else repr(node.value[:40]) + "..."
        tag = node.tag.replace(_YAML_TAG, "!!", 1) if node.tag.startswith(_YAML_TAG) else node.tag
        if node.tag not in _JSON_TAGS:
            what = "a date" if tag == "!!timestamp" else f"YAML's {tag}"
            hint = f"{shown} reads as {what}; quote it to make it a string"
            raise self.fail(node, f"{refusal}: {hint}")
        try:
            return self.constructor.construct_object(node, deep=True)
        except (ValueError, LookupError):  # !!int abc, !!bool maybe, a number too long
            raise self.fail(node, f"{refusal}: {shown} is not a valid {tag}") from None

    def client(self, node: yaml.Node) -> Wanted:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"a client is a mapping of {', '.join(FIELDS)}")
        pairs = self.pairs(node)
        for key, (key_node, _) in pairs.items():
            if key not in FIELDS:
                raise self.fail(key_node, f"unknown key {key!r}: a client has {', '.join(FIELDS)}")
        if "client_id" not in pairs:
            raise self.fail(node, "a client needs a client_id")
        checks: dict[str, tuple[Callable[[yaml.Node, str], Any], Callable[[Any], Any]]] = {
            "client_id": (self.string, clients.check_id),
            "description": (self.string, clients.check_description),
            "scopes": (self.strings, clients.check_scopes),
            "audiences": (self.strings, clients.check_audiences),
            "ttl": (self.seconds, clients.check_ttl),
            "claims": (self.claims, clients.check_claims),
            "rate_limit": (self.rate, clients.check_rate_limit),
            "rate_limit_mode": (self.string, clients.check_rate_limit_mode),
        }
        fields = {
            key: self.checked(pairs[key][1], key, *checks[key]) for key in checks if key in pairs
        }
        auth = self.authentication(node, pairs)
        return Wanted(
            **fields,
            auth_method=auth.method,
            jwks_uri=auth.jwks_uri,
            jwks=auth.jwks,
            line=node.start_mark.line + 1,
            file=self.name,
        )

    def authentication(
        self, node: yaml.Node, pairs: dict[str, tuple[yaml.Node, yaml.Node]]
    ) -> Authentication:
        """``auth_method`` and its keys, checked by the admin service; a refusal names
        the line of the key at fault (of the client when it is one left out)."""
        method = CLIENT_SECRET
        if "auth_method" in pairs:
            method = self.string(pairs["auth_method"][1], "auth_method")
            if method not in METHODS:
                refusal = f"auth_method is one of {', '.join(METHODS)}"
                raise self.fail(pairs["auth_method"][0], refusal)
        jwks_uri = self.string(pairs["jwks_uri"][1], "jwks_uri") if "jwks_uri" in pairs else None
        jwk_text = None
        if "jwks" in pairs:
            jwks_node = pairs["jwks"][1]
            if not isinstance(jwks_node, yaml.MappingNode):
                raise self.fail(
                    jwks_node, "jwks must be a mapping: a JWK Set ({keys: [...]}) or a JWK"
                )
            jwk_text = json.dumps(self.json_value(jwks_node, "jwks", [MAX_KEY_NODES], MAX_DEPTH))
            if method == CLIENT_SECRET:  # named here: the admin service names jwks_uri
                raise self.fail(pairs["jwks"][0], "jwks: keys are for auth_method: private_key_jwt")
        try:
            return clients.check_authentication(method, jwks_uri=jwks_uri, jwk_text=jwk_text)
        except Invalid as exc:
            name = exc.field or "auth_method"
            at = pairs[name][0] if name in pairs else node
            message = str(exc) if str(exc).startswith(name) else f"{name}: {exc}"
            raise self.fail(at, message) from None

    def checked(
        self,
        node: yaml.Node,
        name: str,
        typed: Callable[[yaml.Node, str], Any],
        check: Callable[[Any], Any],
    ) -> Any:
        """The value of ``node``, of the right type (``typed``) and passed through the
        admin service's check for the field ``name``."""
        value = typed(node, name)
        if isinstance(node, yaml.SequenceNode):  # item by item first: the item's line
            for item_node, item in zip(node.value, value, strict=True):
                self.check(item_node, name, check, [item])
        return self.check(node, name, check, value)

    def check(self, node: yaml.Node, name: str, check: Callable[[Any], T], value: Any) -> T:
        try:
            return check(value)
        except Invalid as exc:
            raise self.fail(node, f"{name}: {exc}") from None

    def string(self, node: yaml.Node, name: str) -> str:
        refusal = f"{name} must be a string"
        value = self.scalar(node, refusal) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(value, str):
            raise self.fail(node, refusal)
        return value

    def strings(self, node: yaml.Node, name: str) -> list[str]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{name} must be a list of strings")
        return [self.string(item, f"each of {name}") for item in node.value]

    def claims(self, node: yaml.Node, name: str) -> dict[str, Any]:
        """A mapping of claim names to JSON values, each claim checked at its own line."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{name} must be a mapping of claim names to values")
        budget = [MAX_CLAIM_NODES]
        claims: dict[str, Any] = {}
        for key, (key_node, value_node) in self.pairs(node).items():
            claims[key] = self.json_value(value_node, name, budget, MAX_DEPTH)
            self.check(key_node, name, partial(clients.check_claim, key), claims[key])
        return claims

    def json_value(self, node: yaml.Node, name: str, budget: list[int], depth: int) -> Any:
        """The JSON value ``node`` holds (a mapping with string keys, a list, a JSON
        scalar); at most ``depth`` levels of nesting and the ``budget`` of nodes."""
        budget[0] -= 1
        if budget[0] < 0:
            raise self.fail(node, f"{name}: too large")
        if isinstance(node, yaml.ScalarNode):
            refusal = (
                f"{name}: a value is JSON: a string, number, true, false, null, list or mapping"
            )
            value = self.scalar(node, refusal)
            if not isinstance(value, (str, int, float, bool, type(None))):
                raise self.fail(node, refusal)
            return value
        if depth == 0:
            raise self.fail(node, f"{name}: a value nests more than {MAX_DEPTH} levels deep")
        if isinstance(node, yaml.SequenceNode):
            return [self.json_value(item, name, budget, depth - 1) for item in node.value]
        if isinstance(node, yaml.MappingNode):
            return {
                key: self.json_value(value_node, name, budget, depth - 1)
                for key, (_, value_node) in self.pairs(node).items()
            }
        raise self.fail(node, f"{name}: not a JSON value")

    def rate(self, node: yaml.Node, name: str) -> str | None:
        refusal = f"{name} must be a string such as 1200/minute, or null for the service's"
        value = self.scalar(node, refusal) if isinstance(node, yaml.ScalarNode) else 0
        if value is None or isinstance(value, str):
            return value
        raise self.fail(node, refusal)

    def seconds(self, node: yaml.Node, name: str) -> int | None:
        refusal = f"{name} must be a whole number of seconds, or null for the default"
        value = self.scalar(node, refusal) if isinstance(node, yaml.ScalarNode) else ""
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise self.fail(node, refusal)


def _node(value: Any, mark: yaml.Mark) -> yaml.Node:
    """The YAML tree of a JSON value (``_Pairs`` for its objects), every node at ``mark``."""
    if isinstance(value, _Pairs):
        pairs = [(_Parsed(key, mark), _node(item, mark)) for key, item in value]
        return yaml.MappingNode(_YAML_TAG + "map", pairs, mark, mark)
    if isinstance(value, list):
        items = [_node(item, mark) for item in value]
        return yaml.SequenceNode(_YAML_TAG + "seq", items, mark, mark)
    return _Parsed(value, mark)


# -- planning and applying -----------------------------------------------------------------


async def plan(store: Store, wanted: Sequence[Wanted], *, prune: bool) -> Plan:
    """What it takes to make ``wanted`` true: listed clients missing are created, those
    that differ updated; registered clients not listed are removed if ``prune``, kept
    (and named in ``unlisted``) if not."""
    registered = {client.client_id: client for client in await clients.listing(store)}
    creates: list[Action] = []
    updates: list[Action] = []
    unchanged: list[str] = []
    for client in wanted:
        current = registered.get(client.client_id)
        if current is not None and current.auth_method != client.auth_method:
            raise Invalid(
                f"{client.where}: client {client.client_id!r} authenticates with "
                f"{current.auth_method}, not {client.auth_method}: a client keeps the method "
                "it was registered with (remove it first, or list it under another client_id)"
            )
        if current is None:
            creates.append(Action("create", client.client_id, client))
        elif changes := client.differences(current):
            updates.append(Action("update", client.client_id, client, changes, current))
        else:
            unchanged.append(client.client_id)
    listed = {client.client_id for client in wanted}
    unlisted = [client_id for client_id in registered if client_id not in listed]
    removes = [Action("remove", client_id) for client_id in unlisted] if prune else []
    return Plan(
        actions=(*creates, *updates, *removes),
        unchanged=tuple(unchanged),
        unlisted=() if prune else tuple(unlisted),
    )


async def apply(store: Store, planned: Plan, *, actor: str) -> Applied:
    """Carry out the plan, one audited change at a time, through the admin service.

    It stops at the first change refused (a client created, edited or removed by someone
    else since the plan was made; the database gone) and says which: each change before it
    is a transaction of its own and stands, so the caller must still show the secrets of
    the clients created so far.
    """
    done: list[Action] = []
    secrets: dict[str, str] = {}
    for action in planned.actions:
        try:
            await _carry_out(store, action, actor, secrets)
        except (AdminError, StoreError) as exc:
            return Applied(tuple(done), secrets, failed=action, error=str(exc))
        done.append(action)
    return Applied(tuple(done), secrets)


async def _carry_out(store: Store, action: Action, actor: str, secrets: dict[str, str]) -> None:
    wanted = action.wanted
    if wanted is None:  # a removal
        await clients.remove(store, action.client_id, actor=actor)
    elif action.kind == "create":
        registered = await clients.register(
            store,
            wanted.client_id,
            actor=actor,
            authentication=wanted.authentication(),
            **wanted.policy(),
        )
        if registered.secret is not None:  # a private_key_jwt client has none
            secrets[wanted.client_id] = registered.secret
    else:
        # The whole policy, over the client as the plan found it: a client changed since
        # is refused (Conflict), not overwritten, so the changes made are those planned.
        await clients.update(
            store,
            wanted.client_id,
            actor=actor,
            previous=action.registered,
            keys=wanted.authentication() if "keys" in action.changes else None,
            **wanted.policy(),
        )
