"""Matching request paths to the catalog's endpoints, as the loosest common upstream router reads them.

The proxy must validate every request the upstream would route to a validated
handler (docs/proxy.md, "One path, one meaning"). So a path is normalized the
way permissive routers do before matching:

* ``;`` path parameters removed from every segment, as servlet containers do
  (``/api;x/v1/deals;jsessionid=1`` is ``/api/v1/deals``, ``..;`` is ``..``);
* percent-encoded unreserved characters decoded (RFC 3986 §6.2.2.2): ``%64eals``
  is ``deals``, ``%2e`` is ``.``; other escapes are kept, hex digits upper-cased;
* dot segments removed (RFC 3986 §5.2.4): ``/a/./b``, ``/x/../b``;
* empty segments dropped: repeated slashes merged, a trailing slash ignored;
* literal segments compared without ASCII case (Express, ASP.NET), unless the
  catalog says ``case_sensitive_paths = true``.

A matched request is forwarded with the normalized path (the catalog's spelling
of the literal segments, no path parameters), so what was validated is what the
upstream routes. (A ``#`` fragment is cut from the target before any of this:
proxy.dataplane.routing.)

A path that holds an encoded ``/``, ``\\``, NUL or ``%`` (or a raw ``\\``) in a
segment is *ambiguous*: routers disagree on whether that is one segment or two
(and some decode twice). When the path matches an endpoint either way — as it
stands, or decoded as the loosest router would (every escape, up to three
times, backslashes as slashes) — the match is reported ambiguous, and the data
plane refuses it in enforce and counts it ``unreadable`` otherwise.

Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from proxy.catalog.stages import Endpoint

_UNRESERVED: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_AMBIGUOUS_ESCAPES: Final = ("%2F", "%5C", "%00", "%25")  # after hex digits are upper-cased
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_PLAIN_PATH: Final = re.compile(r"(?:/[a-z0-9_~-][a-z0-9._~-]*)+")  # already normal (and lower case)


def ascii_lower(text: str) -> str:
    """Lower-case ASCII letters only (what case-insensitive routers do; ``İ`` stays ``İ``)."""
    return text.translate(_ASCII_LOWER)


def _decode_unreserved(segment: str) -> str:
    if "%" not in segment:
        return segment

    def decode(match: re.Match[str]) -> str:
        byte = int(match.group(1), 16)
        return chr(byte) if byte in _UNRESERVED else f"%{match.group(1).upper()}"

    return _ESCAPE.sub(decode, segment)


def normalize_segments(raw_path: str) -> list[str]:
    """The path's segments after dropping ``;`` parameters, unreserved decoding, dot-segment removal and dropping
    empty segments."""
    out: list[str] = []
    for piece in raw_path.split("/"):
        segment = _decode_unreserved(piece.partition(";")[0] if ";" in piece else piece)
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    return out


def is_ambiguous(segments: list[str]) -> bool:
    """True if a segment holds an encoded ``/``, ``\\``, NUL or ``%``, or a raw ``\\``."""
    return any("\\" in segment or any(escape in segment for escape in _AMBIGUOUS_ESCAPES)
               for segment in segments if "%" in segment or "\\" in segment)


def loosest_reading(raw_path: str) -> str:
    """``raw_path`` as the loosest router reads it: every escape decoded (repeatedly), backslashes as slashes, and
    a decoded ``#`` read as the start of a fragment."""
    text = raw_path
    for _ in range(3):
        decoded = unquote(text, errors="surrogateescape")
        if decoded == text:
            break
        text = decoded
    return text.partition("#")[0].replace("\\", "/")


def is_ops_path(raw_path: str) -> bool:
    """True for ``/_ops`` and anything under it, however spelt (never forwarded: admin listener only)."""
    for candidate in (raw_path, loosest_reading(raw_path)):
        segments = normalize_segments(candidate)
        if segments and ascii_lower(segments[0]) == "_ops":
            return True
    return False


@dataclass(frozen=True, slots=True)
class PathMatch:
    """A request matched to a validated endpoint."""

    endpoint: Endpoint
    path: str  # the normalized path to forward (without the query)
    ambiguous: bool  # the path holds encodings routers read differently: never validated as-is


class _Template:
    """One endpoint's path as segments: literals (compared folded unless case-sensitive) and ``{var}`` slots."""

    __slots__ = ("endpoint", "literals", "folded", "size")

    def __init__(self, endpoint: Endpoint, case_sensitive: bool) -> None:
        self.endpoint = endpoint
        parts = [part for part in endpoint.path.split("/") if part]
        self.literals: list[str | None] = [None if part.startswith("{") else part for part in parts]
        self.folded = [p if p is None or case_sensitive else ascii_lower(p) for p in self.literals]
        self.size = len(parts)

    def matches(self, keys: list[str]) -> bool:
        if len(keys) != self.size:
            return False
        return all(literal is None or literal == key  # pragma: no mutate - strict: lengths were compared above
                   for literal, key in zip(self.folded, keys, strict=True))

    def spell(self, segments: list[str]) -> str:
        """The forwarded path: the catalog's literals, the request's variable segments."""
        pairs = zip(self.literals, segments, strict=True)  # pragma: no mutate - matched: lengths are equal
        return "/" + "/".join(s if literal is None else literal for literal, s in pairs)


class RouteTable:
    """The catalog's endpoints, matched by method and normalized path."""

    def __init__(self, endpoints: tuple[Endpoint, ...], *, case_sensitive: bool = False) -> None:
        self._case_sensitive = case_sensitive
        self._by_method: dict[str, list[_Template]] = {}
        for endpoint in endpoints:
            for method in endpoint.methods:
                self._by_method.setdefault(method, []).append(_Template(endpoint, case_sensitive))
        self._plain: dict[tuple[str, str], PathMatch] = {
            (method, e.path if case_sensitive else ascii_lower(e.path)): PathMatch(e, e.path, False)
            for e in endpoints if "{" not in e.path for method in e.methods}
        # Plain paths no endpoint of another method matches either: no method override can route them elsewhere.
        self._only: dict[tuple[str, str], bool] = {}
        self._only = {key: not self.elsewhere(*key) for key in self._plain}

    def match(self, method: str, raw_path: str) -> PathMatch | None:
        """The validated endpoint this request reaches (``raw_path`` as sent, without the query), or None."""
        # The common case, nothing to normalize (pragmas: a mutant that skips it normalizes the same, slower).
        if _PLAIN_PATH.fullmatch(raw_path) is not None:  # pragma: no mutate
            plain = self._plain.get((method, raw_path))  # pragma: no mutate
            if plain is not None:
                return plain
        templates = self._by_method.get(method)
        if not templates:
            return None
        segments = normalize_segments(raw_path)
        found = self._find(templates, segments)
        if found is not None:
            return PathMatch(found.endpoint, found.spell(segments), is_ambiguous(segments))
        if "%" not in raw_path and "\\" not in raw_path:
            return None
        split = normalize_segments(loosest_reading(raw_path))
        found = self._find(templates, split)
        return None if found is None else PathMatch(found.endpoint, found.spell(split), True)

    @property
    def methods(self) -> frozenset[str]:
        """Every method some endpoint takes."""
        return frozenset(self._by_method)

    def elsewhere(self, method: str, raw_path: str) -> bool:
        """True if an endpoint of another method than ``method`` matches the path: a method override (a header,
        ``_method`` in the query or the body) could route the request there."""
        if self._only.get((method, raw_path)):  # pragma: no mutate - the loop below says the same, slower
            return False
        return any(self.match(other, raw_path) is not None for other in self._by_method if other != method)

    def _find(self, templates: list[_Template], segments: list[str]) -> _Template | None:
        keys = segments if self._case_sensitive else [ascii_lower(s) for s in segments]
        for template in templates:
            if template.matches(keys):
                return template
        return None
