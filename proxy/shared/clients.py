"""Who sent a request: the client address behind trusted proxies, and the consumer a gateway names.

One rule for the proxy (its validation log lines, exemptions by network) and ``stagectl audit-consumers``
(access logs): ``X-Forwarded-For`` is believed only when the peer is a trusted proxy, and the client is then
the rightmost hop that is not itself trusted — every hop to its right was appended by a proxy we trust, every
hop to its left was written by someone we do not (a client can put anything there). A chain the walk cannot
read (a hop that is not an address) is not believed: the client is the peer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_HOPS: Final = 64  # hops walked from the right; a longer all-trusted chain is not believed


class NetworkError(ValueError):
    """A network list that does not parse, or one that trusts everyone."""


def parse_networks(values: Iterable[str], *, what: str = "", allow_everyone: bool = False) -> tuple[Network, ...]:
    """``10.0.0.0/8``, ``192.0.2.7`` (a single address), IPv6 alike; comma-separated values are split. Errors
    start with ``what`` (``"--trusted-proxy: "``).

    A network of every address (``0.0.0.0/0``, ``::/0``) is refused unless ``allow_everyone``: trusting every
    peer's ``X-Forwarded-For`` lets any client choose its own address.
    """
    networks: list[Network] = []
    for value in values:
        for text in value.split(","):
            text = text.strip()
            if not text:
                continue
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise NetworkError(f"{what}{text[:60]!r} is not an address or CIDR network") from None
            network = unmapped(network)
            if network.prefixlen == 0 and not allow_everyone:
                raise NetworkError(f"{what}{text!r} is every address: any client could then choose its own")
            networks.append(network)
    return tuple(networks)


MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")


def unmapped(network: Network) -> Network:
    """An IPv4-mapped IPv6 network (``::ffff:10.0.0.0/104``) as the IPv4 one: addresses are compared unmapped."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 and network.subnet_of(MAPPED):
        return ipaddress.IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
    return network


def parse_address(text: str) -> Address | None:
    """One hop as proxies write it: ``192.0.2.7``, ``2001:db8::1``, ``[2001:db8::1]:443`` or ``192.0.2.7:443``."""
    text = text.strip()
    if text.startswith("["):
        text, closed, port = text[1:].partition("]")
        if not closed or (port and not port.startswith(":")):
            return None
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address  # a dual-stack socket's ::ffff:10.0.0.1 is 10.0.0.1


def within(address: Address, networks: tuple[Network, ...]) -> bool:
    """``address`` in any of ``networks`` (never across IP versions)."""
    return any(address in network for network in networks)


@dataclass(frozen=True, slots=True)
class Client:
    """The client of one request: ``ip`` as resolved; ``forwarded_ignored`` when the request carried
    ``X-Forwarded-For`` that was not believed (an untrusted peer, or a chain that does not read)."""

    ip: str
    forwarded_ignored: bool = False


class ClientResolver:
    """The rule above, for one list of trusted proxies."""

    __slots__ = ("trusted",)

    def __init__(self, trusted: tuple[Network, ...] = ()) -> None:
        self.trusted = trusted

    def trusts(self, peer: str | None) -> bool:
        address = parse_address(peer) if peer else None
        return address is not None and within(address, self.trusted)

    def resolve(self, peer: str | None, forwarded_for: str | None) -> Client:
        """The client of a request from ``peer`` (``-`` when unknown: a Unix socket) with this
        ``X-Forwarded-For`` (several header lines joined by commas; None when it carried none)."""
        peer_address = parse_address(peer) if peer else None
        shown = str(peer_address) if peer_address is not None else "-"
        if forwarded_for is None or not forwarded_for.strip():
            return Client(shown)
        if peer_address is None or not within(peer_address, self.trusted):
            return Client(shown, forwarded_ignored=True)
        hops = forwarded_for.rsplit(",", MAX_HOPS)
        walked = hops[1:] if len(hops) > MAX_HOPS else hops  # the first piece holds the rest of a longer chain
        leftmost = peer_address
        for hop in reversed(walked):
            address = parse_address(hop)
            if address is None:
                return Client(shown, forwarded_ignored=True)
            if not within(address, self.trusted):
                return Client(str(address))
            leftmost = address
        if len(walked) < len(hops):
            return Client(shown, forwarded_ignored=True)  # MAX_HOPS of ours and still more: not believed
        # every hop is a proxy of ours: the furthest one is as close to the client as we know
        return Client(str(leftmost))
