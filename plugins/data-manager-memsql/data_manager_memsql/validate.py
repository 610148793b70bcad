"""``schema.json`` of a backup, checked before a restore sends any of it to the server.

A backup is read back from storage, which someone else may have written: every value that becomes SQL
text is checked here first, and anything unexpected is a :class:`CorruptBackupError` before the first
statement runs. Names are always quoted (:func:`.rowformat.quote_ident`); the database's charset and
collation are words (``^[A-Za-z0-9_]+$``) and go in unquoted; the only SQL kept as text is each table's
``SHOW CREATE TABLE`` and each view's ``SHOW CREATE VIEW``, which must be exactly one ``CREATE TABLE`` of
that table (no ``... SELECT``/``TABLE``/``VALUES`` filling it from other tables) or one ``CREATE VIEW`` of that
view in the current database. pymysql sends one statement per query (no ``CLIENT_MULTI_STATEMENTS``), and
a top-level ``;`` is refused here as well.
"""

from __future__ import annotations

import re
from typing import Any

from data_manager.errors import CorruptBackupError

from .rowformat import quote_ident

WORD = re.compile(r"[A-Za-z0-9_]+")
_TABLE_HEAD = re.compile(r"CREATE (?:(?:ROWSTORE|COLUMNSTORE|REFERENCE) )*TABLE ")
_VIEW_HEAD = re.compile(r"CREATE (?:OR REPLACE )?(?:ALGORITHM=(?:UNDEFINED|MERGE|TEMPTABLE) )?"
                        r"(?:SQL SECURITY (?:DEFINER|INVOKER) )?VIEW ")
# words that, after a CREATE TABLE's column list, would fill the table from other tables (CREATE TABLE ..
# SELECT / TABLE t / VALUES ROW(..)); table options (ENGINE=.., WITH SYSTEM VERSIONING..) have none of them
_FILLING = {"SELECT", "TABLE", "VALUES"}
MAX_NAME = 64  # characters of a MySQL identifier
NATIVE = "native.json"


def _fail(where: str, problem: str) -> CorruptBackupError:
    return CorruptBackupError(f"{where}: {problem} (corrupt or tampered backup)")


def _short(value: Any) -> str:
    """``value`` for a one-line message: its repr, cut short (a crafted value may be huge)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _name(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME or "\0" in value:
        raise _fail(where, f"{what} {_short(value)} is not a name of 1 to {MAX_NAME} characters")
    return value


def _word(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str) or not WORD.fullmatch(value):
        raise _fail(where, f"{what} {_short(value)} is not a plain word ([A-Za-z0-9_])")
    return value


def _count(value: Any, where: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(where, f"{what} {_short(value)} is not a count")
    return value


def _list(value: Any, where: str, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, f"{what} is not a list")
    return value


def _dict(value: Any, where: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"{what} is not an object")
    return value


def top_level(sql: str) -> tuple[list[str], int, bool]:
    """The words of ``sql`` outside quotes, comments and parentheses (upper case), the depth the text
    ends at (0 when every parenthesis closes) and whether a top-level ``;`` occurs. MySQL runs the text
    of ``/*! ... */`` and MariaDB's ``/*M! ... */`` comments: it is read as SQL here too."""
    words: list[str] = []
    depth, semicolon, i, n = 0, False, 0, len(sql)
    executable = 0  # open /*! comments
    while i < n:
        c = sql[i]
        if c in "`'\"":
            i += 1
            while i < n:
                if sql[i] == "\\" and c != "`":
                    i += 2
                    continue
                if sql[i] == c:
                    if i + 1 < n and sql[i + 1] == c:  # a doubled quote
                        i += 2
                        continue
                    break
                i += 1
            i += 1
        elif sql.startswith("/*!", i) or sql.startswith("/*M!", i):
            i += 3 if sql[i + 2] == "!" else 4
            while i < n and sql[i].isdigit():
                i += 1
            executable += 1
        elif sql.startswith("*/", i) and executable:
            executable -= 1
            i += 2
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif c == "#" or (sql.startswith("--", i) and (i + 2 == n or sql[i + 2].isspace())):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif c == "(":
            depth += 1
            i += 1
        elif c == ")":
            depth -= 1
            i += 1
        elif c == ";":
            semicolon = semicolon or depth <= 0
            i += 1
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (sql[j].isalnum() or sql[j] in "_$"):
                j += 1
            if depth == 0:
                words.append(sql[i:j].upper())
            i = j
        else:
            i += 1
    return words, depth, semicolon


def check_table_ddl(ddl: Any, table: str, where: str) -> None:
    """``ddl`` creates ``table`` (quoted, unqualified: in the current database) from a column list only."""
    if not isinstance(ddl, str):
        raise _fail(where, "the table's DDL is not text")
    head = _TABLE_HEAD.match(ddl)
    if not head or not ddl.startswith(quote_ident(table) + " (", head.end()):
        raise _fail(where, f"the DDL is not a CREATE TABLE of {quote_ident(table)}: {ddl[:60]!r}")
    body = ddl[head.end() + len(quote_ident(table)):]
    words, depth, semicolon = top_level(body)
    filling = _FILLING.intersection(words)
    if depth != 0 or semicolon or filling:
        why = "its parentheses do not balance" if depth else "it holds a ';'" if semicolon else \
            f"it fills the table with {sorted(filling)[0]}"
        raise _fail(where, f"the DDL of {quote_ident(table)} is not one plain CREATE TABLE ({why})")


def check_view_ddl(ddl: Any, view: str, where: str) -> None:
    """``ddl`` creates the view ``view`` (quoted, unqualified) and is one statement."""
    if not isinstance(ddl, str):
        raise _fail(where, "the view's DDL is not text")
    head = _VIEW_HEAD.match(ddl)
    if not head or not ddl.startswith(quote_ident(view) + " AS ", head.end()):
        raise _fail(where, f"the DDL is not a CREATE VIEW of {quote_ident(view)}: {ddl[:60]!r}")
    _words, depth, semicolon = top_level(ddl)
    if depth != 0 or semicolon:
        raise _fail(where, f"the DDL of view {quote_ident(view)} is not one statement")


def check_schema(schema: Any, formats: tuple[str, ...], binary_format: str) -> list[dict[str, Any]]:
    """The databases of ``schema`` once every value a restore uses is the type and shape it must be."""
    schema = _dict(schema, "schema.json", "the document")
    if schema.get("format") not in formats:
        raise CorruptBackupError(f"schema.json: unknown format {schema.get('format')!r}")
    dbs = _list(schema.get("databases"), "schema.json", "databases")
    if not dbs:
        raise _fail("schema.json", "no databases")
    seen_dbs: set[str] = set()
    for db in dbs:
        db = _dict(db, "schema.json", "a database")
        name = _name(db.get("name"), "schema.json", "database name")
        where = f"schema.json, database {name!r}"
        if name in seen_dbs:
            raise _fail(where, "listed twice")
        seen_dbs.add(name)
        _word(db.get("charset"), where, "charset")
        _word(db.get("collation"), where, "collation")
        names: set[str] = set()
        for table in _list(db.get("tables"), where, "tables"):
            table = _dict(table, where, "a table")
            tname = _name(table.get("name"), where, "table name")
            twhere = f"{where}, table {tname!r}"
            if tname in names:
                raise _fail(twhere, "listed twice")
            names.add(tname)
            check_table_ddl(table.get("ddl"), tname, twhere)
            if not isinstance(table.get("artifact"), str) or not table["artifact"]:
                raise _fail(twhere, "no artifact name")
            _count(table.get("rows"), twhere, "row count")
            for col in _list(table.get("columns"), twhere, "columns"):
                col = _dict(col, twhere, "a column")
                _name(col.get("name"), twhere, "column name")
                _word(col.get("data_type"), twhere, "column type")
                if not isinstance(col.get("column_type"), str):
                    raise _fail(twhere, f"column {col['name']!r} has no column type")
                if col.get("charset") is not None:
                    _word(col["charset"], twhere, "column charset")
            if schema["format"] == binary_format:
                for pair in _list(table.get("wire"), twhere, "wire types"):
                    if not (isinstance(pair, list) and len(pair) == 2
                            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 16 for v in pair)):
                        raise _fail(twhere, f"wire type {pair!r} is not two small integers")
        for view in _list(db.get("views"), where, "views"):
            view = _dict(view, where, "a view")
            vname = _name(view.get("name"), where, "view name")
            vwhere = f"{where}, view {vname!r}"
            if vname in names:
                raise _fail(vwhere, "listed twice (or as a table too)")
            names.add(vname)
            check_view_ddl(view.get("ddl"), vname, vwhere)
            if view.get("collation_connection") is not None:
                _word(view["collation_connection"], vwhere, "collation_connection")
    return dbs


def check_native(record: Any) -> list[dict[str, str]]:
    """The databases of a native backup's record: each a database name and the S3 path it went to."""
    entries = _list(_dict(record, NATIVE, "the record").get("databases"), NATIVE, "databases")
    for entry in entries:
        entry = _dict(entry, NATIVE, "a database")
        _name(entry.get("name"), NATIVE, "database name")
        path = entry.get("path")
        if not isinstance(path, str) or not path or any(c in path for c in "\0'\"\\\n\r"):
            raise _fail(NATIVE, f"S3 path {path!r} of {entry['name']!r} is not a plain path")
    return entries
