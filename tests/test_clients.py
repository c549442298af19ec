"""Client identity (proxy.shared.clients): X-Forwarded-For believed from trusted peers only, hostile chains."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.shared.clients import MAX_HOPS, Client, ClientResolver, NetworkError, parse_address, parse_networks

LB = ClientResolver(parse_networks(["10.0.0.0/24", "2001:db8:ffff::/48"]))


@pytest.mark.parametrize(("peer", "forwarded", "client"), [
    ("203.0.113.7", None, Client("203.0.113.7")),  # no header: the peer
    ("203.0.113.7", "  ", Client("203.0.113.7")),  # an empty header is no header
    ("10.0.0.2", "198.51.100.4", Client("198.51.100.4")),  # through our LB
    ("10.0.0.2", "1.2.3.4, 198.51.100.4, 10.0.0.3", Client("198.51.100.4")),  # rightmost untrusted hop
    # forged by the client: whatever it wrote left of what our LB appended is never believed
    ("10.0.0.2", "10.0.0.9, 127.0.0.1, 198.51.100.4", Client("198.51.100.4")),
    ("203.0.113.7", "10.0.0.9", Client("203.0.113.7", forwarded_ignored=True)),  # untrusted peer: ignored
    ("10.0.0.2", "10.0.0.3, 10.0.0.4", Client("10.0.0.3")),  # all ours: the furthest one
    ("10.0.0.2", "198.51.100.4, not-an-ip", Client("10.0.0.2", forwarded_ignored=True)),  # unreadable chain
    ("10.0.0.2", "unknown", Client("10.0.0.2", forwarded_ignored=True)),  # nginx's value for a Unix socket
    ("10.0.0.2", "[2001:db8::5]:4711", Client("2001:db8::5")),  # ports as some balancers write them
    ("10.0.0.2", "198.51.100.4:4711", Client("198.51.100.4")),
    ("2001:db8:ffff::1", "2001:db8::5", Client("2001:db8::5")),
    ("::ffff:10.0.0.2", "198.51.100.4", Client("198.51.100.4")),  # a dual-stack socket's mapped address
    (None, "198.51.100.4", Client("-", forwarded_ignored=True)),  # no peer (a Unix socket)
    ("10.0.0.2", "198.51.100.4\x00, 10.0.0.3", Client("10.0.0.2", forwarded_ignored=True)),
])
def test_resolve(peer: str | None, forwarded: str | None, client: Client) -> None:
    assert LB.resolve(peer, forwarded) == client


def test_no_trusted_proxies_means_the_peer_always() -> None:
    resolver = ClientResolver()
    assert resolver.resolve("127.0.0.1", "203.0.113.7") == Client("127.0.0.1", forwarded_ignored=True)
    assert not resolver.trusts("127.0.0.1") and not resolver.trusts(None) and not resolver.trusts("junk")


def test_a_long_trusted_chain_is_not_walked_to_its_end() -> None:
    """Each hop costs a parse: an all-trusted chain longer than MAX_HOPS is not believed (and not walked)."""
    chain = ", ".join(["10.0.0.7"] * (MAX_HOPS + 5))
    assert LB.resolve("10.0.0.2", chain) == Client("10.0.0.2", forwarded_ignored=True)
    forged = ", ".join(["198.51.100.1"] * 5000) + ", 192.0.2.1"  # a client's 70 KB of hops left of the real one
    assert LB.resolve("10.0.0.2", forged) == Client("192.0.2.1")


@given(st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=8))
def test_the_client_never_is_a_hop_the_lb_did_not_append(hops: list[str]) -> None:
    """Whatever a client writes into X-Forwarded-For, the resolved client is the address our LB appended
    (the last hop), or one of ours left of it: never a value the client chose."""
    real = "192.0.2.77"
    client = LB.resolve("10.0.0.2", ", ".join([*hops, real]))
    assert client == Client(real)


def test_networks_parse_and_refuse_everyone() -> None:
    assert parse_networks(["10.0.0.0/8,192.0.2.7", " ::1 "]) == (
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.0.2.7/32"), ipaddress.ip_network("::1/128"))
    assert parse_networks(["10.1.2.3/8"]) == (ipaddress.ip_network("10.0.0.0/8"),)  # host bits dropped
    for everyone in ("0.0.0.0/0", "::/0", "10.0.0.0/8,0.0.0.0/0"):
        with pytest.raises(NetworkError, match="every address"):
            parse_networks([everyone], what="--trusted-proxies: ")
    assert parse_networks(["0.0.0.0/0"], allow_everyone=True)[0].prefixlen == 0
    with pytest.raises(NetworkError, match=r"^--x: 'nope' is not an address"):
        parse_networks(["nope"], what="--x: ")


def test_mapped_networks_are_compared_as_ipv4() -> None:
    assert parse_networks(["::ffff:10.0.0.0/104"]) == (ipaddress.ip_network("10.0.0.0/8"),)
    assert ClientResolver(parse_networks(["::ffff:10.0.0.0/104"])).resolve("10.0.0.2", "198.51.100.4") == Client(
        "198.51.100.4")


def test_parse_address() -> None:
    assert str(parse_address("[::1]:80")) == "::1" and str(parse_address(" 192.0.2.1 ")) == "192.0.2.1"
    assert parse_address("") is None and parse_address("[::1") is None and parse_address("a:b:c") is None
