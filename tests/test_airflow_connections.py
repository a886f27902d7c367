"""``bulk_update.airflow.connections``: the ``openai`` connection read as the OpenAI
provider's ``OpenAIHook.get_conn`` reads it, and the store's URL from a Postgres connection
(pure: no Airflow needed). The operator reading real connections is tests/test_airflow.py."""

from __future__ import annotations

from typing import Any

import pytest

from bulk_update.airflow.connections import ApiSettings, api_settings, postgres_url
from bulk_update.exceptions import ConfigError
from bulk_update.store.url import check_url, redact

URL = "https://llm-gateway.example/v1"


@pytest.mark.parametrize(
    ("password", "host", "extra", "expected"),
    [
        # The key in the password (the provider's "API Key" field); no host: the default URL.
        ("sk-pw", None, {}, ApiSettings(api_key="sk-pw")),
        # The host is the base URL.
        ("sk-pw", URL, {}, ApiSettings(api_key="sk-pw", base_url=URL)),
        # openai_client_kwargs: its key and base URL win over the password and the host.
        (
            "sk-pw",
            "https://host.example/v1",
            {"openai_client_kwargs": {"api_key": "sk-kw", "base_url": URL}},
            ApiSettings(api_key="sk-kw", base_url=URL),
        ),
        # Its organization and project; what configures the SDK's client is set aside.
        (
            None,
            None,
            {
                "openai_client_kwargs": {
                    "api_key": "sk-kw",
                    "organization": "org-1",
                    "project": "proj-2",
                    "timeout": 10,
                    "max_retries": 5,
                }
            },
            ApiSettings(
                api_key="sk-kw",
                organization="org-1",
                project="proj-2",
                ignored=("max_retries", "timeout"),
            ),
        ),
        # auth_type api_key, said outright; empty values are no values.
        (
            "sk-pw",
            "",
            {"auth_type": "api_key", "openai_client_kwargs": {"api_key": "", "base_url": ""}},
            ApiSettings(api_key="sk-pw"),
        ),
        # No key anywhere: None (openai_connection says so, naming the connection).
        (None, URL, {}, ApiSettings(base_url=URL)),
    ],
)
def test_api_settings_read_the_connection_as_the_provider_does(
    password: str | None, host: str | None, extra: dict[str, Any], expected: ApiSettings
) -> None:
    settings = api_settings("openai_default", password=password, host=host, extra=extra)
    assert settings == expected


@pytest.mark.parametrize(
    ("host", "extra", "message"),
    [
        (None, {"auth_type": "workload_identity"},
         "connection 'c': auth_type 'workload_identity' is not supported"),
        (None, {"auth_type": "oauth"}, "auth_type 'oauth' is not supported"),
        (None, {"openai_client_kwargs": "api_key=sk"},
         "extra.openai_client_kwargs must be a JSON object, got str"),
        (None, {"openai_client_kwargs": {"base_url": 8080}},
         "openai_client_kwargs.base_url must be a string, got int"),
        ("api.openai.com", {},
         "connection 'c': its host 'api.openai.com' is not a URL: give the base URL whole"),
        ("ftp://files.example/v1", {}, "connection 'c': base URL 'ftp://files.example/v1' is not an http(s) URL"),
        ("http://gateway.example/v1", {}, "connection 'c': refusing plain http to gateway"),
        ("https://user:pw@gateway.example/v1", {},
         "connection 'c': the base URL must not hold a user name or password"),
    ],
)  # fmt: skip
def test_api_settings_refuse_what_the_job_cannot_use(
    host: str | None, extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        api_settings("c", password="sk-secret-key", host=host, extra=extra)
    assert message in str(raised.value)
    assert "sk-secret-key" not in str(raised.value)
    assert "pw@" not in str(raised.value)


def test_the_store_url_is_made_from_a_postgres_connections_fields() -> None:
    url, ignored = postgres_url(
        "bulk_update_store", conn_type="postgres", host="db.internal", port=5432, login="bulk",
        password="p@ss/w:rd", schema="bulk_update",
        extra={"sslmode": "require", "connect_timeout": 10, "cursor": "dictcursor", "iam": False},
    )  # fmt: skip
    assert url == (
        "postgresql://bulk:p%40ss%2Fw%3Ard@db.internal:5432/bulk_update"
        "?connect_timeout=10&sslmode=require"
    )
    assert ignored == ("cursor", "iam")  # the Postgres hook's own extras, not libpq's
    assert check_url(url) == url
    assert redact(url) == (
        "postgresql://bulk@db.internal:5432/bulk_update?connect_timeout=10&sslmode=require"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"conn_type": "generic", "host": "db"},
         "store_conn_id 's': its conn_type is 'generic'; the store needs a Postgres connection"),
        ({"conn_type": "postgres", "host": None}, "store_conn_id 's': the connection has no host"),
    ],
)  # fmt: skip
def test_a_store_connection_that_is_not_postgres_is_refused(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        postgres_url("s", port=None, login="u", password="pw-secret", schema="d", extra={},
                     **fields)  # fmt: skip
    assert message in str(raised.value)
    assert "pw-secret" not in str(raised.value)
