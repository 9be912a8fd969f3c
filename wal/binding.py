"""``KeywordShape``: a call's keyword arguments checked against a signature, fast.

A critical call is checked twice before it is logged (``wal.sync.calls`` binds it to the
wrapped manager's method; ``wal.db.checks`` to the effect's); ``inspect.Signature.bind`` costs
about 8 µs each, a tenth of a call's Python work. An engine passes keywords: for those the
check is two set operations, and the arguments come back in the signature's order (as
``bind`` gives them, so a call logs the same bytes however its keywords were ordered).
Anything else (positional arguments, ``*args``/``**kwargs`` in the signature, a missing or
unknown name) falls back to ``Signature.bind``, which raises the same ``TypeError`` it always
did: the fast path only ever answers where ``bind`` would have succeeded.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

__all__ = ["KeywordShape"]

_BY_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


class KeywordShape:
    """A signature, with what a keyword-only call needs precomputed; ``skip`` leading
    parameters are supplied by the callee itself (``conn`` of an effect), not by the call."""

    __slots__ = ("order", "plain", "required", "signature", "skip")

    def __init__(self, signature: inspect.Signature, *, skip: int = 0) -> None:
        self.signature = signature
        self.skip = skip
        params = list(signature.parameters.values())[skip:]
        self.plain = all(p.kind in _BY_KEYWORD for p in params)  # no *args, **kw, positional-only
        self.order = tuple(p.name for p in params)
        self.required = frozenset(p.name for p in params if p.default is inspect.Parameter.empty)

    def bind_keywords(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """``kwargs`` in the signature's order, as ``signature.bind(**kwargs).arguments``;
        raises ``bind``'s own ``TypeError`` for an unknown or missing argument."""
        if self.plain and self.required.issubset(kwargs) and len(kwargs) <= len(self.order):
            ordered = {name: kwargs[name] for name in self.order if name in kwargs}
            if len(ordered) == len(kwargs):  # no name the signature does not have
                return ordered
        bound = self.signature.bind(*([None] * self.skip), **kwargs)
        return dict(list(bound.arguments.items())[self.skip :])
