"""The two Airflow connections the operator reads: the API's (``openai``) and the store's
(``postgres``).

The ``openai`` connection is read exactly as the official OpenAI provider's
``OpenAIHook.get_conn`` reads it, so that one connection serves every OpenAI tool, without
that provider installed: the key is ``extra.openai_client_kwargs.api_key``, else the password;
the base URL ``openai_client_kwargs.base_url``, else the host; the organization and the
project ``openai_client_kwargs``' own. ``auth_type`` (in the extra) must be ``api_key``, the
default: ``workload_identity`` exchanges an identity token through the SDK, which the job does
not use. The reading is a pure function (``api_settings``) of the connection's fields; only
``openai_connection`` and ``store_url`` touch Airflow (imported inside them, so that this module
imports without it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from bulk_update.config import check_base_url
from bulk_update.exceptions import ConfigError

__all__ = ["ApiSettings", "api_settings", "openai_connection", "postgres_url", "store_url"]

# What the job takes from ``openai_client_kwargs``; the rest (timeout, max_retries,
# default_headers, http_client, ...) configures the SDK's client, which the job does not use.
USED_CLIENT_KWARGS = frozenset({"api_key", "base_url", "organization", "project"})


@dataclass(frozen=True, kw_only=True)
class ApiSettings:
    """The API as a connection gives it: None where it says nothing (the job's defaults,
    from the environment, apply). ``ignored``: the client kwargs the job does not use."""

    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    organization: str | None = None
    project: str | None = None
    ignored: tuple[str, ...] = ()


def api_settings(
    conn_id: str, *, password: str | None, host: str | None, extra: Mapping[str, Any]
) -> ApiSettings:
    """The API settings of the ``openai`` connection ``conn_id`` (its password, host and
    parsed extra), as ``OpenAIHook.get_conn`` reads them. Raises ConfigError (naming the
    connection, never the key) for an ``auth_type`` other than ``api_key``, a client kwargs
    that is not a table, or a base URL the job refuses."""
    auth_type = extra.get("auth_type", "api_key")
    if auth_type != "api_key":
        raise ConfigError(
            f"connection {conn_id!r}: auth_type {auth_type!r} is not supported: bulk_update "
            "sends an API key (auth_type 'api_key', the default: the key in the password or in "
            "openai_client_kwargs.api_key)"
        )
    kwargs = extra.get("openai_client_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ConfigError(
            f"connection {conn_id!r}: extra.openai_client_kwargs must be a JSON object, "
            f"got {type(kwargs).__name__}"
        )

    def text(name: str, value: Any) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ConfigError(
                f"connection {conn_id!r}: {name} must be a string, got {type(value).__name__}"
            )
        return value

    base_url = text("openai_client_kwargs.base_url", kwargs.get("base_url")) or text("host", host)
    if base_url is not None and "://" not in base_url:
        where = "openai_client_kwargs.base_url" if kwargs.get("base_url") else "host"
        raise ConfigError(
            f"connection {conn_id!r}: its {where} {base_url!r} is not a URL: give the base URL "
            "whole, https://HOST/v1"
        )
    if base_url is not None:
        try:
            check_base_url(base_url)
        except ConfigError as exc:
            raise ConfigError(f"connection {conn_id!r}: {exc}") from None
    return ApiSettings(
        api_key=text("openai_client_kwargs.api_key", kwargs.get("api_key")) or password or None,
        base_url=base_url,
        organization=text("openai_client_kwargs.organization", kwargs.get("organization")),
        project=text("openai_client_kwargs.project", kwargs.get("project")),
        ignored=tuple(sorted(set(kwargs) - USED_CLIENT_KWARGS)),
    )


def openai_connection(conn_id: str | None) -> ApiSettings:
    """The ``openai`` connection ``conn_id``'s settings; a connection that does not exist (or
    None) gives the environment's (OPENAI_API_KEY, ...), if it has a key. Raises ConfigError
    when neither gives one."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    if conn_id is not None:
        try:
            connection = Connection.get(conn_id)
        except AirflowNotFoundException:
            connection = None
        if connection is not None:
            settings = api_settings(
                conn_id,
                password=connection.password,
                host=connection.host,
                extra=connection.extra_dejson or {},
            )
            if settings.api_key is None:
                raise ConfigError(
                    f"connection {conn_id!r} holds no API key: put it in its password, or in "
                    "its extra as openai_client_kwargs.api_key"
                )
            return settings
    if not os.environ.get("OPENAI_API_KEY"):
        where = "no openai_conn_id" if conn_id is None else f"no connection {conn_id!r}"
        raise ConfigError(f"no API key: {where}, and OPENAI_API_KEY is not set")
    return ApiSettings()


# libpq's connection parameters a Postgres connection's extra may hold; the rest of the
# Postgres provider's extras (cursor, iam, aws_conn_id, ...) are its hook's, not libpq's.
LIBPQ_PARAMETERS = frozenset({
    "sslmode", "sslcert", "sslkey", "sslrootcert", "sslcrl", "sslpassword", "sslnegotiation",
    "sslcompression", "connect_timeout", "application_name", "options", "target_session_attrs",
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
    "tcp_user_timeout", "gssencmode", "channel_binding", "client_encoding", "passfile",
    "service",
})  # fmt: skip


def postgres_url(
    conn_id: str,
    *,
    conn_type: str | None,
    host: str | None,
    port: int | None,
    login: str | None,
    password: str | None,
    schema: str | None,
    extra: Mapping[str, Any],
) -> tuple[str, tuple[str, ...]]:
    """The store's URL from a Postgres connection's fields (its schema field is the database;
    libpq's parameters from its extra), and the extras set aside (the Postgres hook's own).
    Raises ConfigError naming the connection for one that is not Postgres."""
    if conn_type not in {"postgres", "postgresql"}:
        raise ConfigError(
            f"store_conn_id {conn_id!r}: its conn_type is {conn_type!r}; the store needs a "
            "Postgres connection (conn_type postgres)"
        )
    if not host:
        raise ConfigError(f"store_conn_id {conn_id!r}: the connection has no host")
    user = quote(login or "", safe="")
    secret = f":{quote(password, safe='')}" if password else ""
    where = f"[{host}]" if ":" in host else host
    netloc = f"{user}{secret}@{where}" if user else where
    if port:
        netloc += f":{port}"
    query = urlencode({k: str(v) for k, v in sorted(extra.items()) if k in LIBPQ_PARAMETERS})
    url = f"postgresql://{netloc}/{quote(schema or '', safe='')}" + (f"?{query}" if query else "")
    return url, tuple(sorted(set(extra) - LIBPQ_PARAMETERS))


def store_url(conn_id: str) -> tuple[str, tuple[str, ...]]:
    """``postgres_url`` of the connection ``conn_id``. The URL holds the password: only ever
    handed to JobConfig, whose repr hides it."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = Connection.get(conn_id)
    except AirflowNotFoundException:
        raise ConfigError(f"store_conn_id: no connection {conn_id!r}") from None
    return postgres_url(
        conn_id,
        conn_type=connection.conn_type,
        host=connection.host,
        port=connection.port,
        login=connection.login,
        password=connection.password,
        schema=connection.schema,
        extra=connection.extra_dejson or {},
    )
