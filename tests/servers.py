"""Pytest plugin: fixtures on the real servers that ``scripts/services start`` runs.

Loaded by the repository's root ``conftest.py`` (``pytest_plugins = ["tests.servers"]``), so the
fixtures are there for the core's tests and for every plugin's tests.

Markers ``postgres``, ``mariadb``, ``cassandra``, ``minio``: a test carrying one (or using one of
the fixtures below, which adds the marker) needs that server. When the server cannot be reached,
the test is skipped with a loud reason, except in CI (env ``CI=true``) where it fails: CI never
skips a server test.

Function fixtures, each a fresh, uniquely named place that is removed after the test:

``pg_dsn``               libpq URI of a new PostgreSQL database (psycopg 3)
``mysql_db``             :class:`MySQLDatabase` (host, port, user, password, database) on MariaDB (PyMySQL)
``cassandra_keyspace``   :class:`CassandraKeyspace` (host, port, user, password, keyspace, session)
``s3_bucket``            :class:`S3Bucket` (endpoint, access_key, secret_key, bucket, client) on MinIO

Session fixtures ``postgres_server``, ``mariadb_server``, ``cassandra_cluster``, ``minio_server``
check the server once per session. Connection settings come from the environment, with the
values of ``scripts/services env`` as defaults. The drivers are imported only inside the fixtures,
so tests that need no server run without them.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

# name: (product, the fixtures that need it)
SERVERS = {
    "postgres": ("PostgreSQL", ("pg_dsn", "postgres_server")),
    "mariadb": ("MariaDB", ("mysql_db", "mariadb_server")),
    "cassandra": ("Cassandra", ("cassandra_keyspace", "cassandra_cluster")),
    "minio": ("MinIO", ("s3_bucket", "minio_server")),
}

PIP_NAMES = {
    "psycopg": "psycopg[binary]>=3.1",
    "pymysql": "pymysql>=1.1",
    "cassandra": "cassandra-driver>=3.29",
    "minio": "minio>=7.2",
}


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def pg_admin_dsn() -> str:
    return _env("DM_TEST_PG_DSN", "postgresql://dm:dm@127.0.0.1:5432/dm")


def mysql_settings() -> dict[str, Any]:
    return {
        "host": _env("DM_TEST_MYSQL_HOST", "127.0.0.1"),
        "port": int(_env("DM_TEST_MYSQL_PORT", "3306")),
        "user": _env("DM_TEST_MYSQL_USER", "dm"),
        "password": _env("DM_TEST_MYSQL_PASSWORD", "dm"),
    }


def cassandra_settings() -> dict[str, Any]:
    return {
        "host": _env("DM_TEST_CASSANDRA_HOST", "127.0.0.1"),
        "port": int(_env("DM_TEST_CASSANDRA_PORT", "9042")),
        "user": _env("DM_TEST_CASSANDRA_USER", "cassandra"),
        "password": _env("DM_TEST_CASSANDRA_PASSWORD", "cassandra"),
    }


def s3_settings() -> dict[str, str]:
    return {
        "endpoint": _env("DM_TEST_S3_ENDPOINT", "127.0.0.1:9000"),
        "access_key": _env("DM_TEST_S3_ACCESS_KEY", "dmadmin"),
        "secret_key": _env("DM_TEST_S3_SECRET_KEY", "dmadmin-secret"),
    }


def unique_name(prefix: str = "dmt", sep: str = "_") -> str:
    """A fresh name for a database, keyspace or bucket: lower case, starts with a letter."""
    return f"{prefix}{sep}{secrets.token_hex(6)}"


# --------------------------------------------------------------------------- unreachable servers


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def unavailable(name: str, why: str) -> None:
    """Fail (in CI) or skip (elsewhere) the current test because server NAME cannot be used."""
    product = SERVERS[name][0]
    why = " ".join(why.split())  # one line, even for multi-line driver errors
    message = f"{product} NOT AVAILABLE: {why} -- run `scripts/services start {name}`"
    if in_ci():
        pytest.fail(message + " (CI=true: server tests never skip in CI)", pytrace=False)
    pytest.skip(message)


def _import(name: str, server: str) -> Any:
    try:
        return __import__(name)
    except ImportError as exc:
        unavailable(server, f"Python package {name} is not installed ({exc}); pip install '{PIP_NAMES[name]}'")


def _tcp_error(host: str, port: int) -> str | None:
    """None if something accepts connections at host:port, else why not."""
    try:
        with socket.create_connection((host, port), timeout=3):
            return None
    except OSError as exc:
        return f"nothing answers at {host}:{port} ({exc.strerror or exc})"


def _hide_password(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


# --------------------------------------------------------------------------- markers


def pytest_configure(config: pytest.Config) -> None:
    for name, (product, fixtures) in SERVERS.items():
        config.addinivalue_line(
            "markers",
            f"{name}: needs the real {product} server of `scripts/services start {name}` "
            f"(fixtures: {', '.join(fixtures)})",
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that uses a server fixture carries that server's marker, so `-m` can select it; a test
    that carries the marker uses the server's session fixture, so it is checked even when the test
    uses none of the fixtures."""
    for item in items:
        names = getattr(item, "fixturenames", None)
        if names is None:  # not a test function (e.g. a doctest)
            continue
        for name, (_product, fixtures) in SERVERS.items():
            if set(names).intersection(fixtures):
                if item.get_closest_marker(name) is None:
                    item.add_marker(getattr(pytest.mark, name))
            elif item.get_closest_marker(name) is not None and fixtures[1] not in names:
                names.append(fixtures[1])


# --------------------------------------------------------------------------- PostgreSQL


def with_dbname(dsn: str, dbname: str) -> str:
    """DSN (URI or key=value) pointing at another database."""
    if "://" in dsn:
        return urlunsplit(urlsplit(dsn)._replace(path="/" + dbname))
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, dbname=dbname)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The administrative DSN (role dm, a superuser) of a reachable PostgreSQL."""
    dsn = pg_admin_dsn()
    psycopg = _import("psycopg", "postgres")
    try:
        with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        unavailable("postgres", f"cannot log in at {_hide_password(dsn)}: {str(exc).strip()}")
    return dsn


@pytest.fixture
def pg_dsn(postgres_server: str) -> Iterator[str]:
    """libpq URI of a fresh, empty database (owned by the superuser dm); dropped after the test."""
    import psycopg
    from psycopg import sql

    name = unique_name("dmt")
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_dbname(postgres_server, name)
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --------------------------------------------------------------------------- MariaDB


class _Mapping:
    """Dataclass fields readable as ``obj["field"]`` too."""

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def keys(self) -> list[str]:
        return [f for f in self.__dataclass_fields__]  # type: ignore[attr-defined]


@dataclass(frozen=True)
class MySQLDatabase(_Mapping):
    host: str
    port: int
    user: str
    password: str
    database: str

    def connect(self, **kwargs: Any) -> Any:
        """A PyMySQL connection to the database (autocommit, utf8mb4 unless told otherwise)."""
        import pymysql

        options = {"charset": "utf8mb4", "autocommit": True, "connect_timeout": 10, **kwargs}
        return pymysql.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                               database=self.database, **options)


def _mysql_connect(settings: dict[str, Any], **kwargs: Any) -> Any:
    import pymysql

    return pymysql.connect(host=settings["host"], port=settings["port"], user=settings["user"],
                           password=settings["password"], charset="utf8mb4", autocommit=True, **kwargs)


@pytest.fixture(scope="session")
def mariadb_server() -> dict[str, Any]:
    """host, port, user, password of a reachable MariaDB (user dm has all privileges)."""
    s = mysql_settings()
    pymysql = _import("pymysql", "mariadb")
    try:
        conn = _mysql_connect(s, connect_timeout=5)
    except pymysql.MySQLError as exc:
        unavailable("mariadb", f"cannot log in as {s['user']} at {s['host']}:{s['port']}: {exc}")
    conn.close()
    return s


@pytest.fixture
def mysql_db(mariadb_server: dict[str, Any]) -> Iterator[MySQLDatabase]:
    """A fresh, empty MariaDB database (utf8mb4); dropped after the test."""
    name = unique_name("dmt")
    conn = _mysql_connect(mariadb_server)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    try:
        yield MySQLDatabase(database=name, **mariadb_server)
    finally:
        conn = _mysql_connect(mariadb_server)
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()


# --------------------------------------------------------------------------- Cassandra


@dataclass(frozen=True)
class CassandraKeyspace(_Mapping):
    host: str
    port: int
    user: str
    password: str
    keyspace: str
    session: Any  # cassandra.cluster.Session, connected with the keyspace as its default

    @property
    def username(self) -> str:
        return self.user

    @property
    def name(self) -> str:
        return self.keyspace


@pytest.fixture(scope="session")
def cassandra_cluster() -> Iterator[Any]:
    """One connected ``cassandra.cluster.Cluster`` for the whole test session, as the superuser."""
    s = cassandra_settings()
    why = _tcp_error(s["host"], s["port"])
    if why:
        unavailable("cassandra", why)
    _import("cassandra", "cassandra")
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
    from cassandra.policies import WhiteListRoundRobinPolicy

    profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([s["host"]]), request_timeout=60)
    cluster = Cluster(
        [s["host"]],
        port=s["port"],
        auth_provider=PlainTextAuthProvider(s["user"], s["password"]),
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=10,
        control_connection_timeout=10,
    )
    try:
        cluster.connect().shutdown()
    except NoHostAvailable as exc:
        cluster.shutdown()
        errors = "; ".join(f"{host}: {err}" for host, err in exc.errors.items()) or str(exc)
        unavailable("cassandra", f"cannot log in as {s['user']} at {s['host']}:{s['port']}: {errors}")
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture(scope="session")
def _cassandra_admin(cassandra_cluster: Any) -> Iterator[Any]:
    session = cassandra_cluster.connect()
    try:
        yield session
    finally:
        session.shutdown()


@pytest.fixture
def cassandra_keyspace(cassandra_cluster: Any, _cassandra_admin: Any) -> Iterator[CassandraKeyspace]:
    """A fresh keyspace (SimpleStrategy, replication factor 1) and a session using it; dropped after."""
    s = cassandra_settings()
    name = unique_name("dmt")
    _cassandra_admin.execute(
        f"CREATE KEYSPACE {name} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
    )
    session = cassandra_cluster.connect(name)
    try:
        yield CassandraKeyspace(keyspace=name, session=session, **s)
    finally:
        session.shutdown()
        _cassandra_admin.execute(f"DROP KEYSPACE IF EXISTS {name}")


# --------------------------------------------------------------------------- MinIO


@dataclass(frozen=True)
class S3Bucket(_Mapping):
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    client: Any  # minio.Minio

    @property
    def name(self) -> str:
        return self.bucket


def minio_client(settings: dict[str, str]) -> Any:
    """A ``minio.Minio`` on plain HTTP that gives up quickly when the server is down."""
    import minio
    import urllib3

    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5, read=120),
        retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    return minio.Minio(settings["endpoint"], access_key=settings["access_key"], secret_key=settings["secret_key"],
                       secure=False, http_client=http)


@pytest.fixture(scope="session")
def minio_server() -> Any:
    """A ``minio.Minio`` client, as the root user, of a reachable MinIO."""
    s = s3_settings()
    host, _, port = s["endpoint"].rpartition(":")
    why = _tcp_error(host or s["endpoint"], int(port or 80))
    if why:
        unavailable("minio", why)
    minio = _import("minio", "minio")
    client = minio_client(s)
    try:
        client.list_buckets()
    except (minio.error.MinioException, OSError) as exc:
        unavailable("minio", f"cannot list buckets as {s['access_key']} at {s['endpoint']}: {exc}")
    return client


def remove_bucket(client: Any, bucket: str) -> None:
    """Remove a bucket with every object version and unfinished upload in it."""
    from minio.deleteobjects import DeleteObject
    from minio.error import S3Error

    try:
        objects = [DeleteObject(o.object_name, o.version_id)
                   for o in client.list_objects(bucket, recursive=True, include_version=True)]
    except S3Error as exc:
        if exc.code == "NoSuchBucket":
            return
        raise
    errors = list(client.remove_objects(bucket, objects)) if objects else []
    try:
        client.remove_bucket(bucket)
    except S3Error:
        # MinIO's own "delete even if not empty" (unfinished multipart uploads, failed deletes above)
        client._execute("DELETE", bucket, headers={"x-minio-force-delete": "true"})
    if errors:
        raise RuntimeError(f"could not remove objects of bucket {bucket}: {errors[:3]}")


@pytest.fixture
def s3_bucket(minio_server: Any) -> Iterator[S3Bucket]:
    """A fresh, empty bucket; its objects and itself are removed after the test."""
    s = s3_settings()
    name = unique_name("dmt", sep="-")
    minio_server.make_bucket(name)
    try:
        yield S3Bucket(bucket=name, client=minio_server, **s)
    finally:
        remove_bucket(minio_server, name)

