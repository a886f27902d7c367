"""``bulk_update.airflow.connections.api_settings``: the ``openai`` connection read as the
OpenAI provider's ``OpenAIHook.get_conn`` reads it (pure: no Airflow needed). The operator
reading real connections is tests/test_airflow.py."""

from __future__ import annotations

from typing import Any

import pytest

from bulk_update.airflow.connections import ApiSettings, api_settings
from bulk_update.exceptions import ConfigError

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
        ("api.openai.com", {}, "connection 'c': base URL 'api.openai.com' is not an http(s) URL"),
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
