"""A --state-url: checked, and shown without its password (no database driver needed)."""

from __future__ import annotations

import contextlib
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from bulk_update.exceptions import ConfigError

__all__ = ["ENV", "SCHEMES", "check_url", "redact", "secrets"]

SCHEMES = ("postgresql", "postgres")
ENV = "BULK_UPDATE_STATE_URL"


def check_url(url: str) -> str:
    """A --state-url the job can use (ConfigError naming it, without its password). A
    SQLAlchemy URL (``postgresql+psycopg://``, as the Airflow Postgres hook gives) is taken as
    the plain one."""
    _, _, rest = url.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    if at and any(mark in userinfo for mark in "@/?#"):
        # Read one way by Python and another by libpq (a host "ss" out of "p@ss/w"): refused
        # before either, and without a word of the URL (its password is in it somewhere).
        raise ConfigError(
            "--state-url: its user or password holds '@', '/', '?' or '#' as they are: "
            "percent-encode the password (and the user), e.g. '@' as %40, '/' as %2F, ':' as "
            "%3A (python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], "
            'safe=""))\' PASSWORD)'
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (checked: a port that is not a number from 0 to 65535)
    except ValueError:
        raise ConfigError(
            "--state-url: not a valid URL (a bracket, a port?): use "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        ) from None
    scheme, plus, _ = parts.scheme.partition("+")
    if scheme not in SCHEMES:
        raise ConfigError(
            f"--state-url {redact(url)}: use postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    return scheme + url[url.index(":") :] if plus else url


def redact(url: str) -> str:
    """The URL as logs and summaries show it: no password, in the netloc or the query."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(a state URL that cannot be parsed)"
    user = f"{quote(unquote(parts.username))}@" if parts.username else ""
    if ":" in host:
        host = f"[{host}]"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"])
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, query, ""))


def secrets(url: str) -> list[str]:
    found = []
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        found += [v for k, v in parse_qsl(parts.query) if k == "password"]
    return [secret for secret in found if secret]
