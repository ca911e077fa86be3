"""The client's address: the one answer every door, audit event and limit uses (ClientAddressMiddleware sets it).

Behind a reverse proxy the TCP peer is the proxy. Its header (TRUSTED_PROXY_HEADER, X-Forwarded-For by default)
is believed only when the peer is one of TRUSTED_PROXIES, and then only up to the first hop, from the right,
that is not a trusted proxy itself: everything left of that hop was written by the client and proves nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from django.conf import settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# request.META: a forwarding header came with the request (removed by ClientAddressMiddleware). Whether a proxy
# stands between matters to the URLs we build (studies.dicomweb.qido.origin), never to who the client is.
FORWARDED_KEY = "enclave.forwarded"
PEER_ADDRESS_KEY = "enclave.peer_address"  # request.META: the TCP peer, when a proxy's header named the client


def normalized(address: str | None) -> str | None:
    """An IP address in its canonical text (an IPv4-mapped IPv6 address as IPv4), or None when it is not one."""
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


@lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip())


def _in(address: str, networks: Iterable[Network]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip.version == n.version and ip in n for n in networks)


def header_meta_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def client_address_of(meta: Mapping[str, Any]) -> str | None:
    """The client's address for a request's META (REMOTE_ADDR and the proxy header), by the rule above."""
    peer = normalized(meta.get("REMOTE_ADDR"))
    proxies = _networks(tuple(settings.TRUSTED_PROXIES))
    if peer is None or not proxies or not _in(peer, proxies):
        return peer
    hops = [h.strip() for h in str(meta.get(header_meta_key(settings.TRUSTED_PROXY_HEADER), "")).split(",")]
    client = peer
    for hop in reversed([h for h in hops if h]):
        address = normalized(hop)
        if address is None:
            break  # garbage from the client side: the last trusted hop is as far as we can see
        client = address
        if not _in(address, proxies):
            break
    return client
