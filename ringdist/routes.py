"""Which local address the kernel would use to reach a host: a route lookup that sends nothing."""

from __future__ import annotations

from . import channel


def source_address(host: str) -> str | None:
    """This machine's source address for packets to `host` (a name or IP), or None without a route.

    Connecting a UDP socket only selects a route; no packet leaves the machine.
    """
    for family, sockaddr in channel.datagram_addresses(host):
        address = channel.route_source(family, sockaddr)
        if address is not None and address not in ("0.0.0.0", "::"):
            return address
    return None
