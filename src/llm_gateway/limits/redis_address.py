"""Where the rate limiter's Redis is, from its URL: one server, or a master found by Sentinel.

URLs (the query parameters are redis-py's names):

* ``redis://[[user]:password@]host[:port][/db]``;
* ``rediss://...`` for TLS, with ``?ssl_ca_certs=/ca.pem`` (trust these CAs instead
  of the system's), ``&ssl_certfile=/client.pem&ssl_keyfile=/client.key`` (a client
  certificate, for servers with ``tls-auth-clients yes``) and
  ``&ssl_cert_reqs=none`` (no verification: tests only);
* ``unix:///path/to/socket[?db=N]``;
* ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``, or
  ``rediss+sentinel://`` for TLS to the sentinels and the master: the sentinels are
  asked in turn for the master of ``service`` (``SENTINEL get-master-addr-by-name``),
  and the server found must say it is a master (``ROLE``). The password is the
  master's; ``?sentinel_password=`` is the sentinels' own, when they have one.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")


@dataclass(frozen=True, slots=True)
class TlsOptions:
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    verify: bool = True

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_certs)
        if self.certfile:
            context.load_cert_chain(self.certfile, self.keyfile)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where and how to connect, from a Redis URL (see the module docstring)."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # a unix socket
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: TlsOptions | None = None
    sentinels: tuple[tuple[str, int], ...] = ()  # asked in turn for the master
    service: str | None = None  # the master's name at the sentinels
    sentinel_password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise ValueError(
                f"not a Redis URL (redis://, rediss://, unix://, redis+sentinel://): {url!r}"
            )
        query = parse_qs(parts.query)
        if parts.scheme.endswith("+sentinel"):
            return cls._sentinel(url, parts.netloc, parts.path, query, parts.scheme)
        db_text = (query.get("db") or [""])[0] or parts.path.lstrip("/") or "0"
        if parts.scheme == "unix":
            db_text = (query.get("db") or ["0"])[0]
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            path=parts.path if parts.scheme == "unix" else None,
            db=_db(db_text, url),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            tls=_tls(query) if parts.scheme == "rediss" else None,
        )

    @classmethod
    def _sentinel(
        cls, url: str, netloc: str, path: str, query: dict[str, list[str]], scheme: str
    ) -> RedisAddress:
        userinfo, _, hosts = netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        sentinels = tuple(_host_port(h, url) for h in hosts.split(",") if h)
        service, _, db_text = path.strip("/").partition("/")
        if not sentinels or not service:
            raise ValueError(f"a Sentinel URL needs host:port[,host:port...]/service: {url!r}")
        return cls(
            db=_db(db_text or "0", url),
            username=unquote(user) or None,
            password=unquote(password) if userinfo and ":" in userinfo else None,
            tls=_tls(query) if scheme.startswith("rediss") else None,
            sentinels=sentinels,
            service=unquote(service),
            sentinel_password=_param(query, "sentinel_password"),
        )

    def redacted(self) -> str:
        """For logs and /health: where, never the password."""
        if self.sentinels:
            return f"sentinel {','.join(f'{h}:{p}' for h, p in self.sentinels)}/{self.service}"
        return self.path or f"{self.host}:{self.port}"


def _db(text: str, url: str) -> int:
    if not text.isdigit():
        raise ValueError(f"Redis database must be a number, got {text!r} in {url!r}")
    return int(text)


def _host_port(text: str, url: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"sentinel {text!r} is not host:port in {url!r}")
    return host.strip("[]"), int(port)


def _param(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _tls(query: dict[str, list[str]]) -> TlsOptions:
    def one(name: str) -> str | None:
        return _param(query, name)

    reqs = (one("ssl_cert_reqs") or "required").lower()
    if reqs not in ("required", "none"):
        raise ValueError(f"ssl_cert_reqs must be required or none, got {reqs!r}")
    return TlsOptions(
        one("ssl_ca_certs"), one("ssl_certfile"), one("ssl_keyfile"), reqs == "required"
    )
