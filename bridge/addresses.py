"""Check the network addresses a config names, the same way the code that uses them reads them.

``parse_bind`` is what the daemon's HTTP server binds with and what ``check`` validates
``observe.http_bind`` with, so the two cannot disagree. The URL checks catch at ``check``
time what would otherwise surface late and vaguely: an ``http://`` Pulsar service URL makes
the client fail every lookup with a bare ``LookupError``, and a Databricks host without a
scheme makes every request URL relative.
"""

from __future__ import annotations

from urllib.parse import urlsplit

PULSAR_SCHEMES = ("pulsar", "pulsar+ssl")


def parse_bind(bind: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> (host, port); ValueError when malformed."""
    host, sep, port = bind.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{bind!r} is not host:port (port 0 picks a free one)")
    return host, int(port)


def check_service_url(url: str) -> str:
    """A Pulsar service URL: ``pulsar[+ssl]://host:port[,host:port...]``; ValueError if not.

    Several brokers may be listed after the scheme, comma-separated, as the client allows.
    """
    scheme, sep, hosts = url.partition("://")
    if not sep or scheme not in PULSAR_SCHEMES:
        shown = f"{scheme}://" if sep else "no scheme"
        raise ValueError(
            f"{url!r} has {shown}: the broker's binary protocol is pulsar://host:6650 "
            "or pulsar+ssl://host:6651 (http:// is the admin API)"
        )
    hosts = hosts.removesuffix("/")
    if not hosts or "/" in hosts or "?" in hosts:
        raise ValueError(f"{url!r} must be {scheme}://host:port with no path")
    for host in hosts.split(","):
        try:
            _, port = parse_bind(host)
        except ValueError:
            raise ValueError(f"{url!r}: {host!r} is not host:port") from None
        if port == 0:
            raise ValueError(f"{url!r}: {host!r} has port 0")
    return url


def check_http_url(url: str, *, what: str, base_only: bool = False) -> str:
    """An ``http(s)://host[:port]`` URL; with ``base_only`` no path, query or fragment."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        shown = f"the scheme {parts.scheme!r}" if "://" in url else "no scheme"
        raise ValueError(f"{url!r} has {shown}: {what} must start with https:// (or http://)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host: {what} is https://<host>[:port]")
    if port == 0:
        raise ValueError(f"{url!r} has port 0")
    if base_only and (parts.path not in ("", "/") or parts.query or parts.fragment):
        raise ValueError(
            f"{url!r} has a path or query: {what} is the URL up to the host, "
            f"like {parts.scheme}://{parts.netloc}"
        )
    return url
