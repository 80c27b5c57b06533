"""Which local address the kernel would use to reach a host: a route lookup that sends nothing."""

from __future__ import annotations

import socket


def source_address(host: str) -> str | None:
    """This machine's source address for packets to `host` (a name or IP), or None without a route.

    Connecting a UDP socket only selects a route; no packet leaves the machine.
    """
    try:
        infos = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return None
    for family, _, _, _, sockaddr in infos:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect(sockaddr)
            except OSError:
                continue
            address = probe.getsockname()[0].split("%")[0]
            if address not in ("0.0.0.0", "::"):
                return address
    return None
