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

    __slots__ = ("order", "plain", "required", "signature", "skip", "taken", "var_keyword")

    def __init__(self, signature: inspect.Signature, *, skip: int = 0) -> None:
        self.signature = signature
        self.skip = skip
        params = list(signature.parameters.values())
        rest = params[skip:]
        named = [p for p in rest if p.kind is not inspect.Parameter.VAR_KEYWORD]
        # no *args, no positional-only: every named parameter can be given by keyword
        self.plain = all(p.kind in _BY_KEYWORD for p in named)
        self.var_keyword = next(
            (p.name for p in rest if p.kind is inspect.Parameter.VAR_KEYWORD), None
        )
        self.order = tuple(p.name for p in named)
        self.required = frozenset(p.name for p in named if p.default is inspect.Parameter.empty)
        # the leading parameters the callee supplies: a keyword of that name is bind's error
        self.taken = frozenset(p.name for p in params[:skip] if p.kind in _BY_KEYWORD)

    def bind_keywords(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """``kwargs`` in the signature's order, as ``signature.bind(**kwargs).arguments``
        (names a ``**kwargs`` parameter takes gathered under its name, in the call's order);
        raises ``bind``'s own ``TypeError`` for an unknown, missing or doubled argument."""
        if self.plain and self.required.issubset(kwargs) and self.taken.isdisjoint(kwargs):
            ordered = {name: kwargs[name] for name in self.order if name in kwargs}
            if len(ordered) == len(kwargs):  # every name is a named parameter
                return ordered
            if self.var_keyword is not None and self.var_keyword not in ordered:
                extra = {k: v for k, v in kwargs.items() if k not in ordered}
                return {**ordered, self.var_keyword: extra}
        bound = self.signature.bind(*([None] * self.skip), **kwargs)
        return dict(list(bound.arguments.items())[self.skip :])
