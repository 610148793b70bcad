import pytest

from data_manager.errors import ConfigError
from data_manager.types import Settings, redact_urls


def s(**values: object) -> Settings:
    return Settings(values, where="f.toml: dataset 'd', source 's'")


def test_typed_accessors() -> None:
    st = s(host="h", port="5432", on="true", names="one", many=["a", "b"])
    assert st.get_str("host") == "h"
    assert st.get_int("port") == 5432  # "${PORT}" expands to a string
    assert st.get_bool("on") is True
    assert st.get_list("names") == ["one"] and st.get_list("many") == ["a", "b"]
    assert st.get_int("missing", 7) == 7


@pytest.mark.parametrize("call, msg", [
    (lambda st: st.get_str("nope"), "key 'nope': missing (required)"),
    (lambda st: st.get_str("num"), "key 'num': must be a string, not 3"),
    (lambda st: st.get_str("empty"), "key 'empty': must not be empty"),
    (lambda st: st.get_path("nope"), "key 'nope': missing (required)"),
    (lambda st: st.get_path("empty"), "key 'empty': must not be empty"),
    (lambda st: st.get_int("nope"), "key 'nope': missing (required)"),
    (lambda st: st.get_int("host"), "key 'host': must be an integer, not 'h'"),
    (lambda st: st.get_int("flag"), "key 'flag': must be an integer, not True"),
    (lambda st: st.get_int("num", minimum=10), "key 'num': must be at least 10, not 3"),
    (lambda st: st.get_int("neg", minimum=0), "key 'neg': must be at least 0, not -2"),
    (lambda st: st.get_bool("nope"), "key 'nope': missing (required)"),
    (lambda st: st.get_bool("host"), "key 'host': must be true or false, not 'h'"),
    (lambda st: st.get_bool("num"), "key 'num': must be true or false, not 3"),
    (lambda st: st.get_list("nope"), "key 'nope': missing (required)"),
    (lambda st: st.get_list("num"), "key 'num': must be a list of strings, not 3"),
    (lambda st: st.get_list("mixed"), "key 'mixed': must be a list of strings"),
    (lambda st: st.check_known({"host", "num", "flag", "empty", "neg"}), "key 'mixed': unknown key (known: empty, flag, host, neg, num)"),
    (lambda st: st.overridden({"num": "x"}).get_int("num"), "key 'num': must be an integer, not 'x'"),
    (lambda st: (_ for _ in ()).throw(st.error("own", "a plugin's own check")), "key 'own': a plugin's own check"),
])
def test_errors_name_the_key(call, msg: str) -> None:
    with pytest.raises(ConfigError) as e:
        call(s(host="h", num=3, flag=True, empty="", neg="-2", mixed=["a", 1]))
    assert str(e.value).startswith("f.toml: dataset 'd', source 's': " + msg)
    assert e.value.key == msg.split("'")[1]


def test_defaults_and_conversions() -> None:
    st = s(port="-5", on="FALSE", one="x", empty="")
    assert st.get_int("port") == -5 and st.get("port") == -5  # converted once, kept
    assert st.get_bool("on") is False and st.get_bool("off", True) is True
    assert st.get_str("missing", None) is None and st.get_str("empty", "") == ""
    assert st.get_list("one") == ["x"] and st.get_list("none", None) is None and st.get_list("x", []) == []
    assert st.get_path("missing", None) is None and str(s(p="~/x").get_path("p")).endswith("/x")
    assert "port" in st and "nope" not in st and st.keys() == ["port", "on", "one", "empty"]
    assert st.overridden({"on": "true"}, where="elsewhere").where == "elsewhere"
    assert st.overridden({}).where == st.where


def test_public_hides_secrets() -> None:
    st = Settings({"dsn": "postgresql://u:pw@h/db", "api_token": "t", "user": "u"},
                  raw={"dsn": "postgresql://u:pw@h/db", "api_token": "t", "user": "u"}, secret_keys=("user",))
    assert st.public() == {"dsn": "postgresql://u:***@h/db", "api_token": "***", "user": "***"}


def test_redact_urls() -> None:
    assert redact_urls("host=h password=secret dbname=x") == "host=h password=*** dbname=x"
    assert redact_urls(["s3://k:s@host/b"]) == ["s3://k:***@host/b"]
