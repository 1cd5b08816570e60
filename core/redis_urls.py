"""Redis URLs of every process (API, workers, limiter, operator commands): plain, TLS or Sentinel.

``REDIS_URL`` (and ``RATE_LIMIT_STORAGE_URL``) take:

* ``redis://[[user]:password@]host[:port][/db]`` — plain TCP;
* ``rediss://...`` — the same over TLS (what managed Redis offers; redis-py's ``ssl_*`` query
  parameters apply, e.g. ``?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem``);
* ``unix:///path/redis.sock?db=0`` — a local socket;
* ``sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db]`` (also spelled
  ``redis+sentinel://``) — Redis Sentinel: the sentinels (default port 26379) name the current
  master of ``service_name``, and every connection follows it across a failover. The password is
  the master's; query parameters ``sentinel_password`` (the sentinels' own, if they have one)
  and ``ssl=true`` (TLS to the master) are optional.

``redis_pool`` / ``redis_client`` build a connection pool or client for any of them;
``rq_settings`` gives what ``rq worker -c jobs.settings`` reads (RQ takes Sentinel as a
``SENTINEL`` dict, not as a URL); ``dashboard_url`` the spelling rq-dashboard understands.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection, SentinelManagedSSLConnection

SENTINEL_SCHEMES = ("sentinel", "redis+sentinel")
SENTINEL_DEFAULT_PORT = 26379
URL_FORMS = ("redis://host:6379/0, rediss://host:6380/0 (TLS), unix:///path.sock, "
             "or sentinel://host:26379[,host2:26379]/service_name[/db]")


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed ``sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False


def is_sentinel(url: str) -> bool:
    """True for a ``sentinel://`` (or ``redis+sentinel://``) URL."""
    return urlsplit(url).scheme in SENTINEL_SCHEMES


def check_url(url: str, setting: str = "REDIS_URL") -> str:
    """``url`` if it is a Redis URL this service understands, else ValueError naming ``setting``."""
    scheme = urlsplit(url).scheme
    if scheme in SENTINEL_SCHEMES:
        parse_sentinel(url, setting)
    elif scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"{setting}={redact(url)!r} is not a Redis URL; expected {URL_FORMS}")
    return url


def parse_sentinel(url: str, setting: str = "REDIS_URL") -> SentinelTarget:
    """The sentinels, service name, db and credentials of a Sentinel URL (ValueError naming ``setting``)."""
    parts = urlsplit(url)
    hostspec = parts.netloc.rsplit("@", 1)[-1]
    path = [segment for segment in parts.path.split("/") if segment]
    problem = ""
    sentinels: list[tuple[str, int]] = []
    for entry in hostspec.split(","):
        host, _, port = entry.strip().rpartition(":") if ":" in entry else (entry.strip(), "", "")
        if not host or (port and not port.isdigit()):
            problem = f"bad sentinel address {entry!r}"
            break
        sentinels.append((host, int(port) if port else SENTINEL_DEFAULT_PORT))
    if not problem and not path:
        problem = "no service name (the master's name in the sentinels' configuration)"
    if not problem and (len(path) > 2 or (len(path) == 2 and not path[1].isdigit())):
        problem = "the path must be /service_name or /service_name/db"
    if problem:
        raise ValueError(f"{setting}={redact(url)!r}: {problem}; expected "
                         "sentinel://host:26379[,host2:26379]/service_name[/db]")
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    return SentinelTarget(
        sentinels=tuple(sentinels), service_name=path[0], db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        sentinel_password=query.get("sentinel_password") or None,
        ssl=query.get("ssl", "").lower() in ("1", "true", "yes", "on"),
    )


def redact(url: str) -> str:
    """``url`` without its password (for logs and error messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _sentinel_pool(url: str, connection_class: type[redis.Connection] | None,
                   options: dict[str, Any]) -> SentinelConnectionPool:
    target = parse_sentinel(url)
    timeouts = {name: options[name] for name in ("socket_timeout", "socket_connect_timeout") if name in options}
    sentinel_kwargs: dict[str, Any] = dict(timeouts)
    if target.sentinel_password:
        sentinel_kwargs["password"] = target.sentinel_password
    manager = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)
    if connection_class is None:
        connection_class = SentinelManagedSSLConnection if target.ssl else SentinelManagedConnection
    return SentinelConnectionPool(target.service_name, manager, connection_class=connection_class,
                                  db=target.db, username=target.username, password=target.password, **options)


def redis_pool(url: str, *, connection_class: type[redis.Connection] | None = None,
               sentinel_connection_class: type[redis.Connection] | None = None,
               **options: Any) -> redis.ConnectionPool:
    """A connection pool for any URL this module accepts; ``options`` go to every connection.

    ``connection_class`` replaces redis-py's class for redis:// and rediss:// (it must be a
    ``redis.SSLConnection`` for rediss://), ``sentinel_connection_class`` for Sentinel's master
    connections (a ``SentinelManagedConnection``, or its SSL variant with ``ssl=true``).
    """
    check_url(url)
    if is_sentinel(url):
        return _sentinel_pool(url, sentinel_connection_class, options)
    if connection_class is not None:
        options["connection_class"] = connection_class
    return redis.ConnectionPool.from_url(url, **options)


def redis_client(url: str, **options: Any) -> redis.Redis:
    """A client for any URL this module accepts (socket timeouts etc. in ``options``)."""
    return redis.Redis(connection_pool=redis_pool(url, **options))


def rq_settings(url: str) -> dict[str, Any]:
    """The connection settings ``rq worker -c <module>`` reads: ``REDIS_URL``, or for Sentinel
    ``SENTINEL`` (RQ builds ``Sentinel(...).master_for(...)`` from it)."""
    check_url(url)
    if not is_sentinel(url):
        return {"REDIS_URL": url}
    target = parse_sentinel(url)
    return {"REDIS_URL": None, "SENTINEL": {
        "INSTANCES": list(target.sentinels), "MASTER_NAME": target.service_name, "DB": target.db,
        "USERNAME": target.username, "PASSWORD": target.password, "SSL": target.ssl,
        "SENTINEL_KWARGS": {"password": target.sentinel_password} if target.sentinel_password else {},
    }}


def dashboard_url(url: str) -> str:
    """``url`` spelled for rq-dashboard, whose Sentinel URLs are ``redis+sentinel://``."""
    if not is_sentinel(url):
        return url
    return "redis+sentinel" + url[url.index("://"):]
