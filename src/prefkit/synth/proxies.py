"""What HTTP users expect from requests and httpx, for prefkit's aiohttp transport: credentials in
a base URL become the request's auth, and NO_PROXY bypasses a proxy for the hosts it names.

NO_PROXY (or no_proxy) is a comma- or space-separated list; an entry matches a request's host
when it is
  `*`                             every host;
  `example.com` / `.example.com`  that domain and its subdomains (a leading dot or `*.` changes nothing);
  `host:port`                     that host on that port only;
  `10.0.0.0/8`, `::1/128`         an IP address literal inside that network (CIDR);
  `127.0.0.1`, `[::1]`            that address.
Host names compare case-insensitively; a name is never resolved to match a CIDR entry (as
requests and httpx: only IP literals are).
"""

from __future__ import annotations

import base64
import ipaddress
from urllib.parse import unquote, urlsplit, urlunsplit


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """(the URL without `user:password@`, (user, password) or None). Percent-escapes in the
    credentials are decoded, as requests and httpx do."""
    u = urlsplit(url)
    if u.username is None and u.password is None:
        return url, None
    host = u.netloc.rpartition("@")[2]
    return urlunsplit((u.scheme, host, u.path, u.query, u.fragment)), (unquote(u.username or ""),
                                                                       unquote(u.password or ""))


def basic_auth(user: str, password: str) -> str:
    """The `Authorization` header value for HTTP Basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")


def _entries(no_proxy: str) -> list[str]:
    return [e.strip() for e in no_proxy.replace(" ", ",").split(",") if e.strip()]


def _ip(text: str):
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def bypasses_proxy(host: str, port: int | None, no_proxy: str | None) -> bool:
    """Whether the NO_PROXY value `no_proxy` names `host` (on `port`); see the module docstring."""
    if not no_proxy or not host:
        return False
    host = host.lower().strip("[]").rstrip(".")
    host_ip = _ip(host)
    for entry in _entries(no_proxy.lower()):
        if entry == "*":
            return True
        if "/" in entry:
            try:
                net = ipaddress.ip_network(entry.strip("[]"), strict=False)
            except ValueError:
                continue
            if host_ip is not None and host_ip.version == net.version and host_ip in net:
                return True
            continue
        name, want_port = entry, None
        if entry.startswith("["):                        # [::1] or [::1]:8000
            name, _, rest = entry[1:].partition("]")
            if rest.startswith(":") and rest[1:].isdigit():
                want_port = int(rest[1:])
        elif entry.count(":") == 1:                      # host:port (a bare IPv6 literal has several colons)
            name, _, p = entry.partition(":")
            if not p.isdigit():
                continue
            want_port = int(p)
        if want_port is not None and port != want_port:
            continue
        name = name.rstrip(".")
        if name.startswith("*."):
            name = name[1:]
        name = name.lstrip(".")
        if not name:
            continue
        entry_ip = _ip(name)
        if entry_ip is not None or host_ip is not None:
            if entry_ip is not None and host_ip is not None and entry_ip == host_ip:
                return True
            continue
        if host == name or host.endswith("." + name):
            return True
    return False
