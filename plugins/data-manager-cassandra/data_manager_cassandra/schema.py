"""A keyspace's schema as CQL statements that can be replayed into a keyspace of another name.

The driver's metadata objects write their own CQL (``as_cql_query``), with the keyspace name put in by
``protect_name(keyspace)``. To retarget without parsing CQL, each object is rendered from a shallow copy
whose keyspace name is a random placeholder, checked to occur nowhere in the keyspace's real CQL; a
restore replaces exactly that placeholder by the quoted target name. Objects are kept in dependency order:
user types (a type before the types using it), functions, aggregates, tables, then each table's indexes
and triggers, then materialized views.
"""

from __future__ import annotations

import copy
import re
import secrets
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # as CQL writes it, e.g. "frozen<map<text, int>>"
    kind: str  # partition_key | clustering | static | regular
    multicell: bool  # a non-frozen collection or UDT: cells per element

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "kind": self.kind, "multicell": self.multicell}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Column:
        return cls(d["name"], d["type"], d["kind"], bool(d["multicell"]))


def quote(name: str) -> str:
    """A CQL identifier, double-quoted unless it is a plain lower-case name (like the driver's protect_name)."""
    from cassandra.metadata import protect_name

    return protect_name(name)


def table_columns(ks_meta: Any, table: Any) -> list[Column]:
    """The table's columns: partition key, clustering key, then the others in schema order."""
    pk = [c.name for c in table.partition_key]
    ck = [c.name for c in table.clustering_key]
    udts = {quote(n) for n in ks_meta.user_types} | set(ks_meta.user_types)
    out = []
    for name in pk + ck + [n for n in table.columns if n not in pk and n not in ck]:
        col = table.columns[name]
        kind = "partition_key" if name in pk else "clustering" if name in ck else "static" if col.is_static else "regular"
        t = col.cql_type
        multicell = kind in ("static", "regular") and (t.startswith(("list<", "set<", "map<")) or t in udts)
        out.append(Column(name, t, kind, multicell))
    return out


def _user_types_in_order(ks_meta: Any) -> list[Any]:
    from cassandra.cqltypes import cql_types_from_string

    pending = dict(ks_meta.user_types)
    ordered: list[Any] = []

    def visit(name: str) -> None:
        ut = pending.pop(name)
        for field_type in ut.field_types:
            for sub in cql_types_from_string(field_type):
                sub = sub.strip('"')
                if sub in pending:
                    visit(sub)
        ordered.append(ut)

    for name in sorted(ks_meta.user_types):
        if name in pending:
            visit(name)
    return ordered


def _retargeted(obj: Any, attr: str, placeholder: str) -> Any:
    twin = copy.copy(obj)
    setattr(twin, attr, placeholder)
    return twin


def capture(ks_meta: Any, tables: list[str]) -> dict[str, Any]:
    """The keyspace's schema as retargetable statements, for the tables ``tables`` (all: the whole keyspace)."""
    real = ks_meta.export_as_string()
    placeholder = "dmks_" + secrets.token_hex(8)
    while placeholder in real:  # pragma: no cover - 64 random bits
        placeholder = "dmks_" + secrets.token_hex(8)
    whole = sorted(tables) == sorted(ks_meta.tables)
    objects: list[dict[str, Any]] = []

    def add(kind: str, name: str, cql: str, table: str | None = None) -> None:
        assert placeholder in cql, f"{kind} {name}: keyspace placeholder not found in its CQL"
        objects.append({"kind": kind, "name": name, "table": table, "cql": cql})

    for ut in _user_types_in_order(ks_meta):
        add("type", ut.name, _retargeted(ut, "keyspace", placeholder).as_cql_query(formatted=True))
    if whole:
        for fn in ks_meta.functions.values():
            add("function", fn.name, _retargeted(fn, "keyspace", placeholder).as_cql_query(formatted=True))
        for agg in ks_meta.aggregates.values():
            add("aggregate", agg.name, _retargeted(agg, "keyspace", placeholder).as_cql_query(formatted=True))
    for name in tables:
        table = ks_meta.tables[name]
        twin = _retargeted(table, "keyspace_name", placeholder)
        add("table", name, twin.as_cql_query(formatted=True), name)
        for index in table.indexes.values():
            add("index", index.name, _retargeted(index, "keyspace_name", placeholder).as_cql_query(), name)
        for trigger in table.triggers.values():
            add("trigger", trigger.name, _retargeted(trigger, "table", twin).as_cql_query(), name)
    for view in ks_meta.views.values():
        if view.base_table_name in tables:
            add("view", view.name, _retargeted(view, "keyspace_name", placeholder).as_cql_query(formatted=True),
                view.base_table_name)
    return {
        "name": ks_meta.name,
        "whole": whole,
        "placeholder": placeholder,
        "replication": ks_meta.replication_strategy.export_for_schema(),
        "durable_writes": bool(ks_meta.durable_writes),
        "objects": objects,
    }


def render(cql: str, placeholder: str, target: str) -> str:
    """``cql`` with its keyspace placeholder replaced by the (quoted) target keyspace."""
    return cql.replace(placeholder, quote(target))


def create_keyspace(target: str, replication: str, durable_writes: bool, if_not_exists: bool = False) -> str:
    return (f"CREATE KEYSPACE {'IF NOT EXISTS ' if if_not_exists else ''}{quote(target)} "
            f"WITH replication = {replication} AND durable_writes = {'true' if durable_writes else 'false'}")


def if_not_exists(cql: str, kind: str) -> str:
    """``CREATE TYPE x`` -> ``CREATE TYPE IF NOT EXISTS x`` (for restoring some tables into a live keyspace)."""
    word = {"type": "TYPE", "function": "FUNCTION", "aggregate": "AGGREGATE"}[kind]
    return re.sub(rf"^CREATE (OR REPLACE )?{word} ", f"CREATE {word} IF NOT EXISTS ", cql, count=1)


# --------------------------------------------------------------------------- a backup's schema, checked
#
# The schema comes back from storage, which someone else may have written: before a restore sends any of
# it, every string that becomes CQL is checked. The replication is parsed into class + options and
# written anew; each object's CQL must create exactly that object in the placeholder keyspace and be one
# statement (the protocol runs one per request anyway).

REPLICATION_CLASS = re.compile(r"(?:org\.apache\.cassandra\.locator\.)?[A-Za-z][A-Za-z0-9_]*")
REPLICATION_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")  # replication_factor, or a data centre's name
REPLICATION_VALUE = re.compile(r"[0-9]+(?:/[0-9]+)?")  # a replication factor, "3" or "3/1" (transient)
_REPLICATION_ITEM = re.compile(r"\s*'([^']*)'\s*:\s*(?:'([^']*)'|([0-9]+))\s*(,|\})")
PLACEHOLDER = re.compile(r"dmks_[0-9a-f]{16}")
KINDS = ("type", "function", "aggregate", "table", "index", "trigger", "view")
COLUMN_KINDS = ("partition_key", "clustering", "static", "regular")


def parse_replication(value: Any) -> dict[str, str]:
    """A keyspace's replication, as CQL's map literal ``{'class': 'X', 'k': 'v'}`` or a JSON object, as data:
    the class and its options, each checked; ValueError (naming the bad part) otherwise."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, str):
        text = value.strip()
        if not text.startswith("{"):
            raise ValueError("is not a map like {'class': 'NetworkTopologyStrategy', 'dc1': 3}")
        items, pos = [], 1
        if text[1:].strip() != "}":
            while True:
                m = _REPLICATION_ITEM.match(text, pos)
                if not m:
                    raise ValueError(f"is not a map of quoted names to quoted values or numbers (at {text[pos:pos + 30]!r})")
                items.append((m[1], m[2] if m[2] is not None else m[3]))
                pos = m.end()
                if m[4] == "}":
                    break
        else:
            pos = len(text)
        if text[pos:].strip():
            raise ValueError(f"has text after the map ({text[pos:pos + 30]!r})")
    else:
        raise ValueError("is not a map")
    options: dict[str, str] = {}
    for key, val in items:
        if not isinstance(key, str) or not isinstance(val, (str, int)) or isinstance(val, bool):
            raise ValueError(f"has an entry {key!r}: {val!r} that is not a name and a value")
        val = str(val)
        if key in options:
            raise ValueError(f"names {key!r} twice")
        if key == "class":
            if not REPLICATION_CLASS.fullmatch(val):
                raise ValueError(f"class {val!r} is not a replication strategy's name")
        elif not REPLICATION_KEY.fullmatch(key) or len(key) > 100:
            raise ValueError(f"option {key!r} is not a data centre's name or replication_factor")
        elif not REPLICATION_VALUE.fullmatch(val):
            raise ValueError(f"option {key!r} = {val!r} is not a replication factor")
        options[key] = val
    if "class" not in options:
        raise ValueError("has no 'class'")
    return options


def replication_cql(options: dict[str, str]) -> str:
    """The map literal of checked replication options (:func:`parse_replication`): no quote can occur in them."""
    ordered = [("class", options["class"])] + sorted((k, v) for k, v in options.items() if k != "class")
    return "{" + ", ".join(f"'{k}': '{v}'" for k, v in ordered) + "}"


def statements(cql: str) -> int:
    """How many ``;``-separated statements ``cql`` holds, outside strings, quoted names, ``$$`` bodies and comments."""
    count, i, n = 1, 0, len(cql)
    while i < n:
        c = cql[i]
        if c in "'\"":
            i += 1
            while i < n and not (cql[i] == c and not cql.startswith(c * 2, i)):
                i += 2 if cql.startswith(c * 2, i) else 1
            i += 1
        elif cql.startswith("$$", i):
            end = cql.find("$$", i + 2)
            i = n if end < 0 else end + 2
        elif cql.startswith("--", i) or cql.startswith("//", i):
            end = cql.find("\n", i)
            i = n if end < 0 else end + 1
        elif cql.startswith("/*", i):
            end = cql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            if c == ";":
                count += 1
            i += 1
    return count


def _head(kind: str, name: str, table: str | None, ks: str) -> tuple[str, ...]:
    """How the driver's CQL of an object starts (schema.capture), its keyspace being the placeholder ``ks``."""
    q = quote(name)
    on = f"{ks}.{quote(table)}" if table is not None else None
    return {
        "type": (f"CREATE TYPE {ks}.{q} (",),
        "function": (f"CREATE FUNCTION {ks}.{q}(",),
        "aggregate": (f"CREATE AGGREGATE {ks}.{q}(",),
        "table": (f"CREATE TABLE {ks}.{q} (",),
        "index": (f"CREATE INDEX {q} ON {on} (", f"CREATE CUSTOM INDEX {q} ON {on} ("),
        "trigger": (f"CREATE TRIGGER {q} ON {on} USING '",),
        "view": (f"CREATE MATERIALIZED VIEW {ks}.{q} AS",),
    }[kind]


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 256 or "\0" in value:
        raise ValueError(f"{what} {repr(value)[:80]} is not a name")
    return value


def check_keyspace(ks: Any) -> dict[str, str]:
    """Check a backed-up keyspace (the source's info) before a restore uses it; returns its replication.
    ValueError names what is wrong."""
    if not isinstance(ks, dict):
        raise ValueError("a keyspace is not an object")
    name = _name(ks.get("name"), "keyspace name")
    try:
        replication = parse_replication(ks.get("replication"))
    except ValueError as exc:
        raise ValueError(f"keyspace {name!r}: replication {exc}") from None
    placeholder = ks.get("placeholder")
    if not isinstance(placeholder, str) or not PLACEHOLDER.fullmatch(placeholder):
        raise ValueError(f"keyspace {name!r}: placeholder {placeholder!r} is not dmks_ and 16 hex digits")
    if not isinstance(ks.get("whole"), bool) or not isinstance(ks.get("durable_writes"), bool):
        raise ValueError(f"keyspace {name!r}: whole and durable_writes must be true or false")
    objects, tables = ks.get("objects"), ks.get("tables")
    if not isinstance(objects, list) or not isinstance(tables, list):
        raise ValueError(f"keyspace {name!r}: objects and tables must be lists")
    created: set[str] = set()
    for obj in objects:
        if not isinstance(obj, dict) or obj.get("kind") not in KINDS:
            raise ValueError(f"keyspace {name!r}: an object of unknown kind {obj.get('kind') if isinstance(obj, dict) else obj!r}")
        kind, oname, table, cql = obj["kind"], _name(obj.get("name"), "object name"), obj.get("table"), obj.get("cql")
        where = f"keyspace {name!r}, {kind} {oname!r}"
        if kind in ("index", "trigger", "view", "table"):
            _name(table, f"{where}: table")
        elif table is not None:
            raise ValueError(f"{where}: belongs to no table")
        if not isinstance(cql, str) or not cql.startswith(_head(kind, oname, table if kind != "view" else None, placeholder)):
            raise ValueError(f"{where}: its CQL does not create that {kind} in the restored keyspace "
                             f"({str(cql)[:60]!r})")
        if statements(cql) != 1:
            raise ValueError(f"{where}: its CQL is not one statement")
        if kind == "table":
            created.add(oname)
    for table in tables:
        if not isinstance(table, dict):
            raise ValueError(f"keyspace {name!r}: a table is not an object")
        tname = _name(table.get("name"), "table name")
        if tname not in created:
            raise ValueError(f"keyspace {name!r}: rows of table {tname!r}, which the schema does not create")
        rows = table.get("rows")
        if not isinstance(table.get("artifact"), str) or isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ValueError(f"keyspace {name!r}, table {tname!r}: no artifact name or row count")
    return replication


def check_header(header: Any, table: str) -> None:
    """Check a rows artifact's header against the table it restores; ValueError names what is wrong."""
    if not isinstance(header, dict) or header.get("table") != table:
        raise ValueError(f"is the rows of table {header.get('table') if isinstance(header, dict) else None!r}, "
                         f"not of {table!r}")
    columns, select, timed = header.get("columns"), header.get("select"), header.get("timed")
    if not isinstance(columns, list) or not columns or not isinstance(select, list) or not isinstance(timed, list):
        raise ValueError("columns, select and timed must be lists")
    for c in columns:
        if not (isinstance(c, dict) and isinstance(c.get("type"), str) and c.get("kind") in COLUMN_KINDS
                and isinstance(c.get("multicell"), bool)):
            raise ValueError(f"column {c!r} is not a name, type, kind and multicell")
        _name(c.get("name"), "column name")
    if not any(c["kind"] == "partition_key" for c in columns) or len(select) < len(columns):
        raise ValueError("has no partition key, or selects fewer cells than columns")
    if not isinstance(header.get("counter"), bool):
        raise ValueError("counter must be true or false")
    for t in timed:
        if not (isinstance(t, list) and len(t) == 4 and all(isinstance(v, int) and not isinstance(v, bool) for v in t[:3])
                and isinstance(t[3], bool) and 0 <= t[0] < len(columns) and all(len(columns) <= v < len(select) for v in t[1:3])
                and columns[t[0]]["kind"] in ("static", "regular")):
            raise ValueError(f"timed entry {t!r} does not point at a column and its cells")
