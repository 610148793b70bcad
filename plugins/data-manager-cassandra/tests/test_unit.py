"""Tests that need no server: settings, the rows format, schema capture and retargeting."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from data_manager.errors import ConfigError, CorruptBackupError
from data_manager.types import Settings
from data_manager_cassandra import rowformat
from data_manager_cassandra.schema import capture, if_not_exists, render, table_columns
from data_manager_cassandra.source import CassandraSource


def make(**values):
    return CassandraSource("db", Settings(values, where="test.toml, dataset d, source db", secret_keys=("password",)))


# --------------------------------------------------------------------------- settings


def test_settings_defaults_and_describe():
    s = make(keyspace="exp", username="u", password="p")
    assert s.keyspaces == ["exp"]
    assert s.conn.contact_points == ("127.0.0.1",) and s.conn.port == 9042
    assert s.conn.read_consistency == "LOCAL_QUORUM"
    assert s.describe() == "cassandra://127.0.0.1:9042/exp"
    s = make(keyspaces=["a", "b"], contact_points=["h1", "h2"], port="9142", consistency="one", timeout="2.5")
    assert s.keyspaces == ["a", "b"] and s.conn.port == 9142 and s.conn.read_consistency == "ONE"
    assert s.conn.timeout == 2.5
    assert s.describe() == "cassandra://h1:9142,h2:9142/a,b"


@pytest.mark.parametrize("values, key", [
    ({}, "keyspace"),
    ({"keyspace": "a", "keyspaces": ["b"]}, "keyspace"),
    ({"keyspace": "a", "bogus": 1}, "bogus"),
    ({"keyspace": "a", "consistency": "MOST"}, "consistency"),
    ({"keyspace": "a", "username": "u"}, "password"),
    ({"keyspace": "a", "timeout": 0}, "timeout"),
    ({"keyspace": "a", "concurrency": 0}, "concurrency"),
    ({"keyspace": "system"}, "keyspace"),
    ({"keyspaces": ["a", "a"]}, "keyspaces"),
])
def test_settings_errors_name_the_key(values, key):
    with pytest.raises(ConfigError) as err:
        make(**values)
    assert err.value.key == key
    assert "test.toml" in str(err.value) and "\n" not in str(err.value)


def test_password_is_secret_in_public_settings():
    s = make(keyspace="a", username="u", password="hunter2")
    assert s.settings.public()["password"] == "***"


def test_import_does_not_load_the_driver():
    code = "import data_manager_cassandra, sys; print('cassandra' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --------------------------------------------------------------------------- rows format


def artifact(header, pages, total=None):
    buf = io.BytesIO()
    buf.write(rowformat.encode_header(header))
    n = 0
    for rows in pages:
        cells = rowformat.encode_cells(rows)
        buf.write(rowformat.encode_page(len(rows), cells, 1_700_000_000_000))
        buf.write(cells)
        n += len(rows)
    buf.write(rowformat.encode_end(n if total is None else total))
    return buf.getvalue()


def test_rows_format_round_trip():
    pages = [[[b"\x00\x00\x00\x01", None, b""], [b"\x00\x00\x00\x02", b"x" * 70000, b"\xff"]], [[b"k", None, None]]]
    data = artifact({"table": "t"}, pages)
    f = io.BytesIO(data)
    assert rowformat.read_header(f, "t")["table"] == "t"
    got = []
    for count, fetched, cells in rowformat.iter_pages(f, "t"):
        assert fetched == 1_700_000_000_000
        got.append(list(rowformat.split_rows(cells, count, 3)))
    assert got == pages


def test_rows_format_detects_damage():
    data = artifact({"table": "t"}, [[[b"a", b"b"]]])
    for bad, message in ((data[:-3], "truncated"), (artifact({}, [[[b"a", b"b"]]], total=5), "recorded"),
                         (data + b"x", "after the end"), (b"NOPE" + data[4:], "bad magic")):
        f = io.BytesIO(bad)
        with pytest.raises(CorruptBackupError, match=message):
            rowformat.read_header(f, "t")
            for count, _, cells in rowformat.iter_pages(f, "t"):
                list(rowformat.split_rows(cells, count, 2))
    with pytest.raises(CorruptBackupError, match="malformed"):
        list(rowformat.split_rows(b"\x00\x00\x00\x09ab", 1, 1))
    with pytest.raises(CorruptBackupError, match="stray"):
        list(rowformat.split_rows(rowformat.encode_cells([[b"a"]]) + b"zz", 1, 1))


def test_list_of_int32():
    raw = (2).to_bytes(4, "big") + (4).to_bytes(4, "big") + (7).to_bytes(4, "big") + (-1).to_bytes(4, "big", signed=True)
    assert rowformat.list_of_int32(raw) == [7, None]


# --------------------------------------------------------------------------- schema


def keyspace_metadata():
    from cassandra.metadata import ColumnMetadata, IndexMetadata, KeyspaceMetadata, MaterializedViewMetadata, TableMetadataV3, UserType

    ks = KeyspaceMetadata("Exp", True, "SimpleStrategy", {"replication_factor": "1"})
    ks.user_types["outer_t"] = UserType("Exp", "outer_t", ["inner"], ["frozen<inner_t>"])
    ks.user_types["inner_t"] = UserType("Exp", "inner_t", ["x"], ["int"])
    t = TableMetadataV3("Exp", "Data")
    cols = [("pk", "int", "pk"), ("ck", "text", "ck"), ("s", "text", "static"), ("Mixed Case", "list<int>", "r"),
            ("o", "outer_t", "r"), ("f", "frozen<set<text>>", "r")]
    for name, ctype, kind in cols:
        c = ColumnMetadata(t, name, ctype, is_static=kind == "static")
        t.columns[name] = c
        if kind == "pk":
            t.partition_key.append(c)
        if kind == "ck":
            t.clustering_key.append(c)
    t.options = {"comment": "it's Exp."}
    t.indexes["by_f"] = IndexMetadata("Exp", "Data", "by_f", "COMPOSITES", {"target": "values(f)"})
    ks.tables["Data"] = t
    v = MaterializedViewMetadata("Exp", "by_s", "Data", True, "s IS NOT NULL AND pk IS NOT NULL AND ck IS NOT NULL", {})
    v.partition_key = [t.columns["s"]]
    v.clustering_key = [t.columns["pk"], t.columns["ck"]]
    ks.views["by_s"] = v
    t.views["by_s"] = v
    return ks


def test_capture_orders_and_retargets():
    ks = keyspace_metadata()
    schema = capture(ks, ["Data"])
    kinds = [(o["kind"], o["name"]) for o in schema["objects"]]
    assert kinds == [("type", "inner_t"), ("type", "outer_t"), ("table", "Data"), ("index", "by_f"), ("view", "by_s")]
    assert schema["whole"] and schema["name"] == "Exp"
    ph = schema["placeholder"]
    for obj in schema["objects"]:
        assert '"Exp"' not in obj["cql"]  # every keyspace reference went through the placeholder
        cql = render(obj["cql"], ph, "copy_1")
        assert ph not in cql and "Exp" not in cql.replace("Exp.", "")
    view = render(schema["objects"][-1]["cql"], ph, "Other KS")
    assert 'CREATE MATERIALIZED VIEW "Other KS".by_s' in view and 'FROM "Other KS"."Data"' in view
    assert "it''s Exp." in render(schema["objects"][2]["cql"], ph, "x")  # string literals untouched
    assert ks.tables["Data"].keyspace_name == "Exp"  # the driver's own objects are not changed


def test_table_columns_kinds():
    ks = keyspace_metadata()
    cols = {c.name: c for c in table_columns(ks, ks.tables["Data"])}
    assert [c.kind for c in cols.values()] == ["partition_key", "clustering", "static", "regular", "regular", "regular"]
    assert cols["Mixed Case"].multicell and cols["o"].multicell
    assert not cols["f"].multicell and not cols["s"].multicell and not cols["pk"].multicell


def test_if_not_exists():
    assert if_not_exists("CREATE TYPE ks.t (\n  a int\n)", "type") == "CREATE TYPE IF NOT EXISTS ks.t (\n  a int\n)"
    assert if_not_exists("CREATE OR REPLACE FUNCTION ks.f(a int)", "function").startswith("CREATE FUNCTION IF NOT EXISTS ks.f")


class _Batch(list):
    """Stands for the driver's BatchStatement: the bound statements added to it."""

    def __init__(self, batch_type):
        super().__init__()

    def add(self, bound):
        self.append(bound)


def _loader(header, get_replicas, sent):
    """A _RowLoader with no server: the token map answers ``get_replicas``, what it sends goes to ``sent``."""
    from types import SimpleNamespace

    from data_manager_cassandra import source as src

    conn = SimpleNamespace(metadata=SimpleNamespace(get_replicas=get_replicas),
                           session=SimpleNamespace(prepare=lambda cql: SimpleNamespace()))
    source = SimpleNamespace(concurrency=1, conn=SimpleNamespace(retries=0), name="db")
    loader = src._RowLoader(source, conn, header, "ks")
    loader._bound = lambda prepared: SimpleNamespace()
    loader._batch = _Batch
    loader.writer = SimpleNamespace(submit=sent.append, finish=lambda: None)
    return loader


def test_restore_batches_partitions_by_replicas():
    """Consecutive partitions on the same replicas share a batch, at most BATCH_PARTITIONS of them."""
    import struct
    import time

    sent = []
    key = struct.Struct(">i")
    header = {"columns": [{"name": "p", "type": "int", "kind": "partition_key", "multicell": False},
                          {"name": "v", "type": "int", "kind": "regular", "multicell": False}],
              "select": ["p", "v", "WRITETIME(v)", "TTL(v)"], "timed": [[1, 2, 3, False]], "counter": False,
              "table": "t"}
    loader = _loader(header, lambda ks, k: ["a"] if key.unpack(k)[0] < 5 or key.unpack(k)[0] >= 10 else ["b"], sent)
    rows = [[key.pack(p), key.pack(p), struct.pack(">q", 1), None] for p in range(25)]
    loader.page(len(rows), int(time.time() * 1000), rowformat.encode_cells(rows))
    loader.finish()
    partitions = [[key.unpack(b.values[0])[0] for b in batch] for batch in sent]
    assert partitions == [list(range(0, 5)), list(range(5, 10)), list(range(10, 20)), list(range(20, 25))]


def test_restore_batch_bytes_limit_spares_single_partitions():
    """Batches over several partitions stay under Cassandra's 5 KiB warning; one partition's do not need to."""
    import struct
    import time

    from data_manager_cassandra import source as src

    key = struct.Struct(">i")
    header = {"columns": [{"name": "p", "type": "int", "kind": "partition_key", "multicell": False},
                          {"name": "c", "type": "int", "kind": "clustering", "multicell": False},
                          {"name": "v", "type": "blob", "kind": "regular", "multicell": False}],
              "select": ["p", "c", "v", "WRITETIME(v)", "TTL(v)"], "timed": [[2, 3, 4, False]], "counter": False,
              "table": "t"}

    def batches(partition_of) -> list[int]:
        sent: list = []
        loader = _loader(header, lambda ks, k: ["a"], sent)
        rows = [[key.pack(partition_of(i)), key.pack(i), b"x" * 1000, struct.pack(">q", 1), None] for i in range(100)]
        loader.page(len(rows), int(time.time() * 1000), rowformat.encode_cells(rows))
        loader.finish()
        return [len(b) if isinstance(b, _Batch) else 1 for b in sent]

    assert batches(lambda i: 0) == [src.BATCH_ROWS, 100 - src.BATCH_ROWS]  # one partition: rows cap only
    spread = batches(lambda i: i)  # ~1.1 kB a row over as many partitions: 4 a batch (5 KiB)
    assert sum(spread) == 100 and max(spread) == 4
    # Three rows a partition: still 5 KiB, not the single-partition limit, once a batch spans partitions.
    assert max(batches(lambda i: i // 3)) == 4
