"""How an upstream is reached over the network: the environment's proxies
(``ProxyTable``, read as curl reads them) and an upstream's TLS settings (``Tls``).

Pure: no HTTP client is imported, so reading the models file and building the
app stay free of it (``config``); ``http1`` and ``transport`` use these.
"""

from __future__ import annotations

import base64
import ipaddress
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from llm_gateway.errors import ConfigError

Origin = tuple[str, str, int]  # scheme, host, port


@dataclass(frozen=True)
class Tls:
    """TLS settings of an upstream (the models file's ``tls:``); None fields: defaults."""

    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def context(self, where: str) -> ssl.SSLContext | None:
        """The SSL context these settings make; None for the defaults (system CAs)."""
        if not (self.ca_bundle or self.client_cert):
            if self.client_key:
                raise ConfigError(f"{where}: tls.client_key given without tls.client_cert")
            return None
        for name, path in (("ca_bundle", self.ca_bundle), ("client_cert", self.client_cert)):
            if path and not Path(path).is_file():
                raise ConfigError(f"{where}: tls.{name} {path} is not a file")
        try:
            context = ssl.create_default_context(cafile=self.ca_bundle)
            if self.client_cert:
                context.load_cert_chain(self.client_cert, self.client_key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{where}: tls settings refused: {exc}") from exc
        return context


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy: where to connect, and its Proxy-Authorization (or None)."""

    host: str
    port: int
    authorization: bytes | None


def parse_proxy(url: str) -> Proxy:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"proxy {url!r}: only http:// proxies are supported")
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = b"Basic " + base64.b64encode(pair)
    return Proxy(parts.hostname, parts.port or 80, auth)


class ProxyTable:
    """The environment's proxies, read once; which one (or none) serves an origin."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        found = urllib.request.getproxies_environment() if environ is None else environ
        self._by_scheme = {
            s: parse_proxy(found.get(s) or found["all"])
            for s in ("http", "https")
            if found.get(s) or found.get("all")
        }
        self._no_proxy = found.get("no", "")
        self._cache: dict[Origin, Proxy | None] = {}

    def for_origin(self, origin: Origin) -> Proxy | None:
        if origin in self._cache:
            return self._cache[origin]
        scheme, host, port = origin
        proxy = self._by_scheme.get(scheme)
        if proxy is not None and self._bypass(host, port):
            proxy = None
        self._cache[origin] = proxy
        return proxy

    def _bypass(self, host: str, port: int) -> bool:
        return any(no_proxy_matches(e, host, port) for e in self._no_proxy.split(",") if e.strip())


def no_proxy_matches(entry: str, host: str, port: int) -> bool:
    """curl's NO_PROXY rules: ``*``; a host or domain (``example.com`` and
    ``.example.com`` both match it and its subdomains), with ``:port`` optionally;
    an IP address or a CIDR network (``10.0.0.0/8``)."""
    entry = entry.strip().lower()
    host = host.lower().strip("[]")
    if entry == "*":
        return True
    if "/" in entry or _is_ip(host):
        try:
            return ipaddress.ip_address(host) in ipaddress.ip_network(
                entry.strip("[]"), strict=False
            )
        except ValueError:
            return False
    name, _, entry_port = entry.partition(":")
    if entry_port and entry_port != str(port):
        return False
    name = name.lstrip(".")
    return host == name or host.endswith("." + name)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
