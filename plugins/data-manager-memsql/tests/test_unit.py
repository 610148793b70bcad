"""Tests that need no server: settings, names, the rows format, SingleStore's native SQL."""

from __future__ import annotations

import io
import json

import pytest

from data_manager.errors import ConfigError, CorruptBackupError, SourceError
from data_manager.types import Settings
from data_manager_memsql import singlestore
from data_manager_memsql.rowformat import (
    MAGIC_VALUES,
    Column,
    FrameReader,
    FrameWriter,
    ParamBatches,
    insert_prefix,
    param_types,
    placeholders,
    quote_ident,
    select_rows,
)
from data_manager_memsql.wire import walk_packets
from data_manager_memsql.source import MemsqlSource, artifact_name, scratch_name, strip_definer


def source(**values):
    return MemsqlSource("db", Settings({"user": "dm", **values}, where="cfg.toml, dataset d, source db"))


# ---------------------------------------------------------------- settings


def test_settings_defaults_and_describe():
    s = source(database="exp", password="pw")
    assert (s.host, s.port, s.databases) == ("127.0.0.1", 3306, ["exp"])
    assert s.describe() == "mysql://dm@127.0.0.1:3306/exp"
    assert "pw" not in s.describe()


@pytest.mark.parametrize("values, key", [
    ({}, "database"),
    ({"database": "a", "databases": ["b"]}, "databases"),
    ({"databases": ["a", "a"]}, "databases"),
    ({"database": "x" * 65}, "databases"),
    ({"database": "a", "port": "nope"}, "port"),
    ({"database": "a", "typo": 1}, "typo"),
    ({"database": "a", "native_backup": "bucket/path"}, "native_backup"),
    ({"database": "a", "native_backup": "s3://b/p", "native_backup_config": "{nope"}, "native_backup_config"),
])
def test_bad_settings_name_the_key(values, key):
    with pytest.raises(ConfigError) as err:
        source(**values)
    assert err.value.key == key
    assert "cfg.toml" in str(err.value)


def test_port_from_env_string_and_databases_list():
    s = source(databases=["a", "b"], port="3307")
    assert s.port == 3307 and s.databases == ["a", "b"]


def test_password_is_secret_in_metadata():
    from data_manager.plugins import get_registry

    stype, _ = get_registry().source_type("memsql", "test")
    settings = Settings({"user": "dm", "password": "hunter2", "database": "a",
                         "native_backup_credentials": {"aws_secret_access_key": "k"}},
                        secret_keys=stype.secret_keys)
    public = settings.public()
    assert public["password"] == "***" and public["native_backup_credentials"] == "***"


def test_target_mapping():
    assert source(databases=["b", "a"])._targets(["a", "b"]) == ["a", "b"]  # same names: same place
    assert source(database="copy")._targets(["exp"]) == ["copy"]
    assert source(databases=["x", "y"])._targets(["a", "b"]) == ["x", "y"]
    with pytest.raises(SourceError, match="2 database"):
        source(database="x")._targets(["a", "b"])


# ---------------------------------------------------------------- names


def test_artifact_names_are_safe_and_distinct():
    names = {artifact_name(d, t) for d, t in [("db", "t"), ("db", "T"), ("db", ".."), ("db", "a/b"),
                                              ("d.b", "t"), ("db", "spa ce"), ("db", "ünï")]}
    assert len(names) == 7
    for n in names:
        parts = n.split("/")
        assert len(parts) == 3 and not any(p.startswith(".") or p == "" for p in parts)
    assert artifact_name("exp", "events") == "tables/exp/events.rows"


def test_scratch_name_fits_mysql_limit():
    n = scratch_name("x" * 64, "r")
    assert len(n) <= 64 and "__dmr_" in n
    assert scratch_name("a", "r") != scratch_name("a", "r")


def test_strip_definer():
    ddl = ("CREATE ALGORITHM=UNDEFINED DEFINER=`dm`@`%` SQL SECURITY DEFINER VIEW `v` AS "
           "select 'DEFINER=`x`@`y`' AS `a`")
    assert strip_definer(ddl) == ("CREATE ALGORITHM=UNDEFINED SQL SECURITY DEFINER VIEW `v` AS "
                                  "select 'DEFINER=`x`@`y`' AS `a`")
    assert strip_definer("CREATE VIEW `v` AS select 1") == "CREATE VIEW `v` AS select 1"


# ---------------------------------------------------------------- rows format


def packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def lenenc(value: bytes) -> bytes:
    """A length-prefixed value of the binary protocol."""
    n = len(value)
    if n < 251:
        head = bytes([n])
    elif n < 1 << 16:
        head = b"\xfc" + n.to_bytes(2, "little")
    elif n < 1 << 24:
        head = b"\xfd" + n.to_bytes(3, "little")
    else:
        head = b"\xfe" + n.to_bytes(8, "little")
    return head + value


def binary_row(fields: list[bytes | None]) -> bytes:
    """A binary-protocol row payload: header, NULL bitmap (offset 2), the encoded fields."""
    bitmap = 0
    for i, f in enumerate(fields):
        if f is None:
            bitmap |= 1 << (i + 2)
    return b"\x00" + bitmap.to_bytes((len(fields) + 9) // 8, "little") + b"".join(f for f in fields if f is not None)


def rows_packets(rows: list[list[bytes | None]]) -> bytes:
    """Row packets as a server sends them, rows of 16 MiB or more split into 0xFFFFFF-byte packets."""
    out, seq = [], 2
    for row in rows:
        payload = binary_row(row)
        while True:
            out.append(packet(seq % 256, payload[:0xFFFFFF]))
            seq += 1
            if len(payload) < 0xFFFFFF:
                break
            payload = payload[0xFFFFFF:]
    return b"".join(out)


EOF_PACKET = packet(9, b"\xfe\x00\x00\x02\x00")
# wire types (code, flags) as the server describes the columns of a result
TINY, SHORT, LONG, LONGLONG, FLOAT, DOUBLE, DATE, DATETIME, TIME, YEAR, DECIMAL, VARSTR, BLOB, BIT, JSON = (
    (1, 0), (2, 0), (3, 0), (8, 0), (4, 0), (5, 0), (10, 0), (12, 0), (11, 0), (13, 32), (246, 0), (253, 0), (252, 128),
    (16, 32), (245, 0))
UNSIGNED = 32


def test_parameter_types_follow_the_wire_types():
    wire = [TINY, (3, UNSIGNED), LONGLONG, FLOAT, DOUBLE, DATE, DATETIME, TIME, YEAR, DECIMAL, VARSTR, BLOB, BIT, JSON,
            (9, 0), (14, 0), (247, 0), (255, 128), (254, 0), (254, 0)]
    cols = [Column(str(i), t, t, cs) for i, (t, cs) in enumerate([
        ("tinyint", None), ("int", None), ("bigint", None), ("float", None), ("double", None), ("date", None),
        ("datetime", None), ("time", None), ("year", None), ("decimal", None), ("varchar", "latin1"),
        ("blob", None), ("bit", None), ("json", None), ("mediumint", None), ("date", None), ("enum", "utf8mb4"),
        ("point", None), ("inet6", None), ("uuid", None)])]
    assert param_types(wire, cols) == bytes([
        1, 0, 3, 0x80, 8, 0, 4, 0, 5, 0, 10, 0, 12, 0, 11, 0,
        2, 0x80,  # YEAR: 2 bytes like SHORT, unsigned
        246, 0,  # DECIMAL as its text
        252, 0, 252, 0, 252, 0x80,  # a string, BLOB, BIT: binary strings (never converted)
        253, 0,  # MySQL's JSON: text (no charset in information_schema)
        3, 0,  # INT24 comes in 4 bytes like LONG
        10, 0,  # NEWDATE
        252, 0, 252, 0,  # ENUM (has a charset), GEOMETRY (binary)
        253, 0, 253, 0])  # INET6, UUID: their text, which they parse back
    with pytest.raises(CorruptBackupError, match="2 wire types for 1 columns"):
        param_types([TINY, TINY], cols[:1])


def test_select_and_insert_leave_out_generated_columns():
    cols = [Column("a", "int", "int"), Column("g", "int", "int", generated=True), Column("we`ird", "text", "text"),
            Column("j", "json", "json")]
    assert select_rows("d", "t", cols) == "SELECT `a`,`we``ird`,`j` FROM `d`.`t`"
    assert insert_prefix("t`", cols) == b"INSERT INTO `t``` (`a`,`we``ird`,`j`) VALUES "
    assert placeholders(cols) == b"(?,?,CONVERT(? USING utf8mb4))"
    assert quote_ident("a`b") == "`a``b`"


def batches(ncols, rows, max_rows=100, max_bytes=1 << 20, frames=1):
    body = rows_packets(rows)
    cut = len(rows_packets(rows[: len(rows) // 2])) if frames == 2 else len(body)
    return list(ParamBatches(ncols, max_rows, max_bytes, "t").batches([body[:cut], body[cut:]] if frames == 2 else [body]))


def test_rows_become_parameters_unchanged_with_their_null_bits():
    rows = [[b"\x01", lenenc(b"a"), None], [None, None, b"\x07" * 8], [b"\x03", lenenc(b""), b"\x00" * 8]]
    [(n, nulls, values)] = batches(3, rows)
    assert n == 3
    # NULL bits at offset 0, parameter i of row r at bit r*3+i: row 0 col 2, row 1 cols 0 and 1
    assert nulls == ((1 << 2) | (1 << 3) | (1 << 4)).to_bytes(2, "little")
    assert values == b"\x01" + lenenc(b"a") + b"\x07" * 8 + b"\x03" + lenenc(b"") + b"\x00" * 8


def test_batches_end_at_max_rows_or_max_bytes():
    rows = [[i.to_bytes(4, "little"), lenenc(b"x" * (70_000 if i % 3 == 0 else 1))] for i in range(10)]
    assert [n for n, _, _ in batches(2, rows, max_rows=4)] == [4, 4, 2]
    assert [n for n, _, _ in batches(2, rows, max_bytes=100_000)] == [3, 3, 3, 1]
    assert [n for n, _, _ in batches(2, rows, frames=2)] == [10]  # batches span frames
    assert b"".join(v for _, _, v in batches(2, rows, max_rows=3)) == b"".join(binary_row(r)[2:] for r in rows)


def test_a_row_of_16_mib_spans_packets():
    huge = b"z" * (0xFFFFFF + 10)  # 8-byte length, payload over two packets
    body = rows_packets([[b"\x01", lenenc(huge)], [b"\x02", lenenc(b"a")]])
    end, rows, continued, status = walk_packets(body + EOF_PACKET, False)
    assert (end, rows, continued, status) == (len(body), 2, False, 1)
    [(n, nulls, values)] = list(ParamBatches(2, 10, 1 << 30, "t").batches([body]))
    assert n == 2 and values == b"\x01" + lenenc(huge) + b"\x02" + lenenc(b"a")


def test_walk_stops_at_incomplete_packets_and_errors():
    body = rows_packets([[b"\x01", lenenc(b"a")], [b"\x02", None]])
    assert walk_packets(body[:-1], False) == (len(rows_packets([[b"\x01", lenenc(b"a")]])), 1, False, 0)
    error = packet(4, b"\xff\x15\x04#42000boom")
    assert walk_packets(body + error, False) == (len(body), 2, False, 2)
    # a continuation packet is never taken for the end, whatever its first byte
    assert walk_packets(packet(2, b"\xfe" * 0xFFFFFF) + packet(3, b"\xfe\x00") + EOF_PACKET, False)[:2] == \
        (0xFFFFFF + 4 + 6, 1)


@pytest.mark.parametrize("damage", [lambda b: b[:-1], lambda b: b[:3], lambda b: b"\x01\x00\x00\x01\x01" + b[5:]])
def test_damaged_packets_are_corrupt(damage):
    body = rows_packets([[b"\x01", lenenc(b"abc")], [b"\x02", lenenc(b"de")]])
    with pytest.raises(CorruptBackupError):
        list(ParamBatches(2, 10, 1 << 20, "t").batches([damage(body)]))


def test_frames_round_trip_and_count():
    buf = io.BytesIO()
    w = FrameWriter(buf)
    w.write_frame(b"p1p2", 2)
    w.write_frame(b"", 0)
    w.write_frame(b"p3", 1)
    w.finish()
    buf.seek(0)
    r = FrameReader(buf, "t")
    assert list(r) == [b"p1p2", b"p3"]
    assert r.rows == 3 == w.rows
    buf.seek(0)
    with pytest.raises(CorruptBackupError, match="format"):  # a format 3 artifact is not VALUES text
        list(FrameReader(buf, "t", MAGIC_VALUES))


@pytest.mark.parametrize("mangle", [lambda b: b[:-3], lambda b: b"XX" + b[2:], lambda b: b + b"junk"])
def test_frames_detect_damage(mangle):
    buf = io.BytesIO()
    w = FrameWriter(buf)
    w.write_frame(b"p", 1)
    w.finish()
    with pytest.raises(CorruptBackupError):
        list(FrameReader(io.BytesIO(mangle(buf.getvalue())), "t"))


# ---------------------------------------------------------------- SingleStore


def target():
    return singlestore.S3Target.parse("s3://bkt/data-manager/", {"region": "eu-west-1", "endpoint_url": "http://m:9000"},
                                      {"aws_access_key_id": "AK", "aws_secret_access_key": "it's\\secret"})


def test_native_backup_sql():
    t = target()
    path = t.path_for("20261123T072900Z-abc")
    assert path == "bkt/data-manager/20261123T072900Z-abc"
    sql = singlestore.backup_sql("exp`42", t, path)
    assert sql == (
        "BACKUP DATABASE `exp``42` TO S3 'bkt/data-manager/20261123T072900Z-abc'"
        " CONFIG '{\"endpoint_url\": \"http://m:9000\", \"region\": \"eu-west-1\"}'"
        " CREDENTIALS '{\"aws_access_key_id\": \"AK\", \"aws_secret_access_key\": \"it\\'s\\\\\\\\secret\"}'"
    )
    assert "secret" not in singlestore.redacted(sql, t) and singlestore.redacted(sql, t).endswith("CREDENTIALS '***'")


def test_native_restore_sql():
    t = singlestore.S3Target.parse("s3://bkt", None, {"role_arn": "arn:x"})
    assert singlestore.restore_sql("exp", t, "bkt/s", "copy") == (
        "RESTORE DATABASE `exp` AS `copy` FROM S3 'bkt/s' CREDENTIALS '{\"role_arn\": \"arn:x\"}'")
    assert singlestore.restore_sql("exp", t, "bkt/s", "exp").startswith("RESTORE DATABASE `exp` FROM S3")


class FakeCursor:
    def __init__(self, memsql: str | None):
        self.memsql = memsql
        self.sql: list[str] = []
        self._row = None

    def execute(self, sql, args=None):
        import pymysql

        self.sql.append(sql)
        if sql == "SELECT @@memsql_version":
            if self.memsql is None:
                raise pymysql.err.OperationalError(1193, "Unknown system variable 'memsql_version'")
            self._row = (self.memsql,)

    def fetchone(self):
        return self._row


class FakeSink:
    def __init__(self):
        self.files: dict[str, bytearray] = {}
        self.info: dict = {}

    def open(self, name, compression="auto"):
        sink = self

        class W(io.BytesIO):
            def __exit__(self, *exc):
                sink.files[name] = self.getvalue()
                return False

            def abort(self):
                pass

        return W()

    def set_info(self, **info):
        self.info.update(info)


def test_memsql_detection():
    assert singlestore.memsql_version(FakeCursor(None)) is None
    assert singlestore.memsql_version(FakeCursor("8.5.1")) == "8.5.1"


def test_native_backup_flow_runs_backup_database_per_database():
    src = source(databases=["a", "b"], native_backup="s3://bkt/dm",
                 native_backup_credentials='{"aws_access_key_id": "AK", "aws_secret_access_key": "SK"}')
    cur, sink = FakeCursor("8.5.1"), FakeSink()
    src._native_backup(cur, sink, "5.7.32", "8.5.1")
    assert [s.split(" TO S3 ")[0] for s in cur.sql] == ["BACKUP DATABASE `a`", "BACKUP DATABASE `b`"]
    record = json.loads(sink.files["native.json"])
    assert record["mode"] == "native" and [d["name"] for d in record["databases"]] == ["a", "b"]
    assert all(d["path"].startswith("bkt/dm/") for d in record["databases"])
    assert "SK" not in json.dumps(sink.info) and "SK" not in sink.files["native.json"].decode()


# ---------------------------------------------------------------- ordered parallel ranges


def test_ordered_ranges_keep_key_order_and_skip_gaps():
    from data_manager_memsql.parallel import OrderedRanges, ReaderPool

    keys = [*range(1, 200), *range(10**12, 10**12 + 300), 2**63 - 1]  # a huge gap and the top key
    calls = []

    def fetch(conn, lo, hi):
        calls.append((lo, hi))
        got = [k for k in keys if lo <= k <= hi]
        frames = [(",".join(map(str, got)).encode(), len(got))] if got else []
        nxt = None if got else next((k for k in keys if k > hi), None)
        return frames, sum(len(f[0]) for f in frames), nxt

    pool = ReaderPool([object(), object(), object()], owned=False)
    try:
        frames = list(OrderedRanges(pool, fetch, keys[0], keys[-1], target=400, step=16))
    finally:
        pool.close()
    seen = [int(k) for body, _ in frames for k in body.split(b",")]
    assert seen == keys and sum(n for _, n in frames) == len(keys)
    assert len(calls) < 200  # the gap was jumped, not walked


def test_ordered_ranges_surface_a_reader_error():
    from data_manager_memsql.parallel import OrderedRanges, ReaderPool

    def fetch(conn, lo, hi):
        if lo > 50:
            raise SourceError("boom")
        return [(b"x", hi - lo + 1)], 1, None

    pool = ReaderPool([object(), object()], owned=False)
    try:
        with pytest.raises(SourceError, match="boom"):
            list(OrderedRanges(pool, fetch, 1, 1000, target=10, step=10))
    finally:
        pool.close()


def test_parallel_and_compress_settings():
    assert (source(database="x").parallel, source(database="x").compress) == (1, True)
    s = source(database="x", parallel="4", compress=False)
    assert (s.parallel, s.compress) == (4, False)
    with pytest.raises(ConfigError, match="parallel"):
        source(database="x", parallel=0)
