"""Whether a URL points inside the farm: a webhook's URL is a member's choice, and the
scheduler POSTs to it from the farm's own network (see `webhook_allow_private`)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

ALLOW_SETTING = "RENDERFARM_WEBHOOK_ALLOW_PRIVATE"


def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address `host` resolves to now (none if it does not resolve)."""
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in found]


def inside_address(url: str) -> str | None:
    """Why `url` may not be posted to: its host is, or resolves to, an address that is not
    on the public internet (loopback, private, link-local as a cloud's metadata service,
    unspecified, reserved); None if every address it resolves to is public. A name that
    does not resolve is None here: the POST then fails by itself."""
    host = urlsplit(url).hostname or ""
    for address in _addresses(host):
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is 127.0.0.1
        if not (mapped or address).is_global:
            what = host if host == str(address) else f"{host} ({address})"
            return (
                f"{what} is not a public address: webhooks to the farm's own network "
                f"need {ALLOW_SETTING}=1"
            )
    return None
