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
    (lambda st: st.get_int("host"), "key 'host': must be an integer"),
    (lambda st: st.get_str("num"), "key 'num': must be a string"),
    (lambda st: st.get_int("num", minimum=10), "key 'num': must be at least 10"),
    (lambda st: st.check_known({"host"}), "key 'num': unknown key"),
])
def test_errors_name_the_key(call, msg: str) -> None:
    with pytest.raises(ConfigError) as e:
        call(s(host="h", num=3))
    assert str(e.value).startswith("f.toml: dataset 'd', source 's': ") and msg in str(e.value)


def test_public_hides_secrets() -> None:
    st = Settings({"dsn": "postgresql://u:pw@h/db", "api_token": "t", "user": "u"},
                  raw={"dsn": "postgresql://u:pw@h/db", "api_token": "t", "user": "u"}, secret_keys=("user",))
    assert st.public() == {"dsn": "postgresql://u:***@h/db", "api_token": "***", "user": "***"}


def test_redact_urls() -> None:
    assert redact_urls("host=h password=secret dbname=x") == "host=h password=*** dbname=x"
    assert redact_urls(["s3://k:s@host/b"]) == ["s3://k:***@host/b"]
