"""Parameter names in a query string or a form body, read as loosely as real frameworks read them.

Two readings matter to the proxy (docs/proxy.md, "One path, one meaning"):

* ``_method``: Express's method-override, Spring's HiddenHttpMethodFilter,
  Symfony and Laravel route a POST by a ``_method`` parameter (query or form
  body), as the override headers do;
* the stage field's own name: Rails (query parameters win over the body's),
  Symfony's ``Request::get`` and PHP's ``$_REQUEST`` read ``?stage=`` or
  ``?deals[0][stage]=`` as the value the proxy validated in the body.

So names are decoded (``%XX`` and ``+``), split on ``&`` and ``;`` (Rack 2 and
old Python split on both), read as PHP mangles them (leading spaces dropped,
`` ``, ``.`` and an unmatched ``[`` become ``_``), cut before ``[`` or ``.``
(``deals[0][stage]``, qs's ``deals.0.stage``) and compared under case folding.
Looser than any one framework on purpose: a false match only makes the
proxy refuse a request in ``enforce``; a missed one lets a value through.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final
from urllib.parse import unquote_plus

from proxy.catalog.keys import fold_key

METHOD_PARAM: Final = "_method"
_SEPARATORS: Final = re.compile(r"[&;]")
_UNMATCHED_BRACKET: Final = re.compile(r"\[(?![^\]]*\])")


def _mangled(name: str) -> str:
    """A parameter name as PHP registers it: leading spaces dropped, space, dot and an unmatched ``[`` as ``_``."""
    return _UNMATCHED_BRACKET.sub("_", name.lstrip(" ").replace(" ", "_").replace(".", "_"))


def _bases(name: str) -> set[str]:
    """The top-level names ``name`` may be read as, folded."""
    plain = re.split(r"[\[.]", name, maxsplit=1)[0]
    php = _mangled(name).split("[", 1)[0]
    return {fold_key(plain), fold_key(php)}


def parameters(text: str) -> Iterator[tuple[set[str], str]]:
    """Each parameter of a query string or form body: (its possible top-level names, folded; its value)."""
    for pair in _SEPARATORS.split(text):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        yield _bases(unquote_plus(name, errors="replace")), unquote_plus(value, errors="replace")


def method_overrides(text: str) -> tuple[str, ...]:
    """The methods ``_method`` parameters name (upper-cased, sorted, unique)."""
    if "method" not in text.lower() and "%" not in text:  # pragma: no mutate - the loop finds none, slower
        return ()
    found = {value.strip().upper() for names, value in parameters(text) if METHOD_PARAM in names}
    return tuple(sorted(found))


def names_key(text: str, key: str) -> bool:
    """True if a parameter's top-level name is ``key`` to some framework (``stage``, ``Stage[]``, ``ſtage``)."""
    folded = fold_key(key)
    return any(folded in names for names, _ in parameters(text))
