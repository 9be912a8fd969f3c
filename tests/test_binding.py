"""``KeywordShape.bind_keywords`` answers exactly what ``inspect.Signature.bind`` answers: the
same arguments in the same order, or the same ``TypeError``, for every signature shape."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from wal.binding import KeywordShape

P = inspect.Parameter
NAMES = ["a", "b", "c", "d", "conn"]


@st.composite
def signatures(draw: st.DrawFn) -> inspect.Signature:
    kinds = [P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY]
    params: list[P] = []
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=5))
    kind_i = 0
    seen_default = False
    for name in names:
        kind_i = draw(st.integers(kind_i, len(kinds) - 1))
        kind = kinds[kind_i]
        default = P.empty
        if kind is P.KEYWORD_ONLY or seen_default or draw(st.booleans()):
            if kind is not P.KEYWORD_ONLY:
                seen_default = True
            if seen_default or draw(st.booleans()):
                default = 0
        params.append(P(name, kind, default=default))
    if draw(st.booleans()):
        at = sum(1 for p in params if p.kind is not P.KEYWORD_ONLY)
        params.insert(at, P("args", P.VAR_POSITIONAL))
    if draw(st.booleans()):
        params.append(P("kw", P.VAR_KEYWORD))
    return inspect.Signature(params)


def _outcome(fn: Any) -> tuple[str, Any]:
    try:
        return "ok", list(fn().items())
    except TypeError as exc:
        return "error", str(exc)


@given(
    signatures(),
    st.integers(0, 1),
    st.dictionaries(st.sampled_from([*NAMES, "zz"]), st.integers(), max_size=6),
)
@example(
    inspect.Signature([P("conn", P.POSITIONAL_OR_KEYWORD), P("a", P.KEYWORD_ONLY)]), 1, {"a": 1}
)
@example(  # the callee's own parameter passed by the call: bind's "multiple values" error
    inspect.Signature([P("conn", P.POSITIONAL_OR_KEYWORD), P("a", P.KEYWORD_ONLY)]),
    1,
    {"a": 1, "conn": 2},
)
@example(  # an effect's shape: (conn, **kwargs)
    inspect.Signature([P("conn", P.POSITIONAL_OR_KEYWORD), P("kw", P.VAR_KEYWORD)]),
    1,
    {"b": 1, "a": 2},
)
@example(
    inspect.Signature([P("conn", P.POSITIONAL_OR_KEYWORD), P("kw", P.VAR_KEYWORD)]),
    1,
    {"a": 1, "conn": 2},
)
def test_same_answer_as_bind(sig: inspect.Signature, skip: int, kwargs: dict[str, int]) -> None:
    skip = min(skip, len(sig.parameters))
    first = list(sig.parameters.values())[:skip]
    if any(p.kind in (P.VAR_POSITIONAL, P.VAR_KEYWORD, P.KEYWORD_ONLY) for p in first):
        skip = 0  # the callee supplies a leading positional parameter, nothing else
    shape = KeywordShape(sig, skip=skip)

    def reference() -> dict[str, Any]:
        bound = sig.bind(*([None] * skip), **kwargs)
        return dict(list(bound.arguments.items())[skip:])

    assert _outcome(lambda: shape.bind_keywords(kwargs)) == _outcome(reference)


def test_order_is_the_signatures() -> None:
    def effect(conn: object, symbol: str, side: str, quantity: int = 1) -> None: ...

    shape = KeywordShape(inspect.signature(effect), skip=1)
    got = shape.bind_keywords({"quantity": 2, "side": "buy", "symbol": "X"})
    assert list(got) == ["symbol", "side", "quantity"]
    with pytest.raises(TypeError, match="missing a required argument: 'side'"):
        shape.bind_keywords({"symbol": "X"})
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        shape.bind_keywords({"symbol": "X", "side": "buy", "bogus": 1})
