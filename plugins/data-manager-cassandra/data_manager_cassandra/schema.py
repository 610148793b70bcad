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
