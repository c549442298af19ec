"""``stagectl audit-consumers LOG…``: who calls the three endpoints, and are they ours?

Reads the proxy's JSON logs and nginx/Apache combined access logs (detected per
line), keeps requests to the catalog's endpoints, and groups them by client IP
and user agent (and the consumer the proxy's lines name). ``X-Forwarded-For``
is believed only when the peer is a ``--trusted-proxy``; the client is then the
rightmost address not itself trusted (proxy.shared.clients: the proxy's own
rule). Forwarded addresses from peers that are not trusted are counted per
peer, and while there are any the verdict is not clear: behind a load balancer
every request seems to come from it. Classes: internal (``--internal-cidr``; default RFC 1918, loopback,
IPv6 ULA), external, and ambiguous (carrier-grade NAT 100.64/10: could be
either). Manual classifications in a TOML file win and mark a consumer known.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from proxy.catalog.paths import RouteTable
from proxy.catalog.stages import Catalog
from proxy.shared.clients import ClientResolver, Network, NetworkError, parse_address, parse_networks
from tools.shared.errors import EXIT_USAGE, CommandError

DEFAULT_INTERNAL = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "::1/128", "fc00::/7")
AMBIGUOUS = (ipaddress.ip_network("100.64.0.0/10"),)
CLASSES = ("internal", "external", "mitigated", "ignored")
COMBINED = re.compile(r'^(?P<peer>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<method>[A-Z]+) (?P<path>\S+)[^"]*" '
                      r'(?P<status>\d{3}) \S+ "(?:[^"\\]|\\.)*" "(?P<ua>(?:[^"\\]|\\.)*)"(?: "(?P<xff>[^"]*)")?')


@dataclass
class Hit:
    peer: str
    xff: str | None
    user_agent: str
    endpoint: str
    ts: str
    unknown: bool
    consumer: str = ""


@dataclass
class Consumer:
    ip: str
    user_agent: str
    cls: str
    known: bool = False
    note: str = ""
    requests: int = 0
    unknown_stages: int = 0
    endpoints: set[str] = field(default_factory=set)
    first: str = ""
    last: str = ""
    names: set[str] = field(default_factory=set)  # consumer names the proxy's lines gave (--consumer-header)


@dataclass
class Ignored:
    """Requests whose ``X-Forwarded-For`` was not believed, from one peer."""

    peer: str
    requests: int = 0
    example: str = ""  # one forwarded-for value, as logged


@dataclass
class Audit:
    consumers: dict[tuple[str, str], Consumer]
    skipped: int  # lines that are not requests to the validated endpoints
    ignored: dict[str, Ignored]  # by peer

    @property
    def undecided_ignored(self) -> list[Ignored]:
        """Peers whose forwarded addresses were ignored and that no classification decides (a load balancer to
        trust, or a client forging the header to record by hand), most requests first."""
        decided = {c.ip for c in self.consumers.values() if c.known}
        return sorted((seen for seen in self.ignored.values() if seen.peer not in decided),
                      key=lambda seen: (-seen.requests, seen.peer))


def networks(values: Sequence[str], what: str, *, allow_everyone: bool = False) -> tuple[Network, ...]:
    try:
        return parse_networks(values, what=f"{what}: ", allow_everyone=allow_everyone)
    except NetworkError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None


def _proxy_line(event: dict[str, Any]) -> Hit | None:
    if event.get("event") != "stage_validation" or not isinstance(event.get("client_ip"), str):
        return None
    forwarded = event.get("forwarded_for")  # logged only when the proxy did not believe it
    return Hit(event["client_ip"], forwarded if isinstance(forwarded, str) else None,
               str(event.get("user_agent") or ""), str(event.get("endpoint") or ""), str(event.get("ts") or ""),
               event.get("result") in ("unknown", "invalid"), str(event.get("consumer") or ""))


def _combined_line(line: str, routes: RouteTable) -> Hit | None:
    match = COMBINED.match(line)
    if match is None:
        return None
    found = routes.match(match["method"], match["path"].split("?", 1)[0])
    if found is None:
        return None
    endpoint = found.endpoint
    try:
        ts = datetime.strptime(match["time"], "%d/%b/%Y:%H:%M:%S %z").isoformat()
    except ValueError:
        ts = match["time"]
    xff = match["xff"] if match["xff"] not in (None, "-") else None
    return Hit(match["peer"], xff, match["ua"], endpoint.name, ts, False)


def parse_line(raw: bytes, routes: RouteTable) -> Hit | None:
    """A request to a validated endpoint, from either log format; None for anything else."""
    text = raw.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        return _proxy_line(event) if isinstance(event, dict) else None
    return _combined_line(text, routes)


def classify(ip: str, internal: tuple[Network, ...]) -> str:
    address = ipaddress.ip_address(ip)
    if any(address in net for net in AMBIGUOUS):
        return "ambiguous"
    return "internal" if any(address in net for net in internal) else "external"


def load_classifications(path: Path | None) -> dict[tuple[str, str], dict[str, str]]:
    """Manual decisions: ``[[consumer]] ip, user_agent, class, note``."""
    if path is None or not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CommandError(f"--classifications {path}: not valid TOML: {exc}", EXIT_USAGE) from None
    decisions = {}
    for index, entry in enumerate(data.get("consumer", [])):
        if not isinstance(entry, dict) or not isinstance(entry.get("ip"), str) or entry.get("class") not in CLASSES:
            raise CommandError(f"--classifications {path}: consumer {index + 1} needs ip and class "
                               f"(one of {', '.join(CLASSES)})", EXIT_USAGE)
        decisions[(entry["ip"], str(entry.get("user_agent", "")))] = {"class": entry["class"],
                                                                     "note": str(entry.get("note", ""))}
    return decisions


def audit(lines: Iterable[bytes], catalog: Catalog, *, internal: tuple[Network, ...], trusted: tuple[Network, ...],
          decisions: dict[tuple[str, str], dict[str, str]]) -> Audit:
    """Consumers by (client IP, user agent), the lines that were not requests to our endpoints, and the peers
    whose forwarded addresses were not believed."""
    routes = RouteTable(catalog.endpoints, case_sensitive=catalog.case_sensitive_paths)
    resolver = ClientResolver(trusted)
    consumers: dict[tuple[str, str], Consumer] = {}
    ignored: dict[str, Ignored] = {}
    skipped = 0
    for raw in lines:
        hit = parse_line(raw, routes) if raw.strip() else None
        if hit is None or parse_address(hit.peer) is None:
            skipped += 1
            continue
        client = resolver.resolve(hit.peer, hit.xff)
        ip = client.ip
        if client.forwarded_ignored:
            seen = ignored.setdefault(ip, Ignored(ip, example=hit.xff or ""))
            seen.requests += 1
        key = (ip, hit.user_agent)
        consumer = consumers.get(key)
        if consumer is None:
            decision = decisions.get(key) or decisions.get((ip, ""))
            consumer = consumers[key] = Consumer(ip, hit.user_agent, decision["class"] if decision
                                                 else classify(ip, internal), decision is not None,
                                                 decision["note"] if decision else "")
        consumer.requests += 1
        consumer.unknown_stages += hit.unknown
        if hit.consumer:
            consumer.names.add(hit.consumer)
        consumer.endpoints.add(hit.endpoint)
        consumer.first = min(consumer.first or hit.ts, hit.ts)
        consumer.last = max(consumer.last, hit.ts)
    return Audit(consumers, skipped, ignored)


def verdict(result: Audit) -> int:
    """0 clear; 4 while any consumer is unclassified (ambiguous, no decision) or forwarded addresses were ignored
    (the real clients are unknown); else 3 if any is external."""
    classes = {c.cls for c in result.consumers.values()}
    if "ambiguous" in classes or result.undecided_ignored:
        return 4
    return 3 if "external" in classes else 0


def ignored_hint(result: Audit) -> str:
    """One line naming the peers whose X-Forwarded-For was ignored, and the flag to pass."""
    peers = result.undecided_ignored
    named = ", ".join(f"{seen.peer} ({seen.requests} request(s), e.g. X-Forwarded-For {seen.example[:60]!r})"
                      for seen in peers[:3])
    more = f" and {len(peers) - 3} more" if len(peers) > 3 else ""
    return (f"X-Forwarded-For from peers that are not trusted was ignored: {named}{more}; if they are your load "
            f"balancers, pass --trusted-proxy CIDR (e.g. --trusted-proxy {peers[0].peer}); if not, decide them in "
            "--classifications")


def record(path: Path, result: Audit) -> None:
    """Write consumers and their class into the classifications file (existing decisions kept).

    Ambiguous consumers are left out: someone has to decide them (add them by hand); so are undecided peers
    whose forwarded addresses were ignored: a load balancer's address is not a consumer.
    """
    undecided = {seen.peer for seen in result.undecided_ignored}
    consumers = [c for c in result.consumers.values() if c.ip not in undecided]
    decisions = load_classifications(path)
    lines = ["# stagectl audit-consumers classifications: edit 'class' (internal, external, mitigated, ignored)", ""]
    for c in sorted(consumers, key=lambda c: (c.ip, c.user_agent)):
        decided = decisions.get((c.ip, c.user_agent), {})
        cls = decided.get("class") or c.cls
        if cls not in CLASSES:
            continue
        lines += ["[[consumer]]", f"ip = {orjson.dumps(c.ip).decode()}",
                  f"user_agent = {orjson.dumps(c.user_agent).decode()}", f'class = "{cls}"',
                  f"note = {orjson.dumps(decided.get('note') or c.note).decode()}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
