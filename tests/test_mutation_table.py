"""The mutation table (``tests/mutation/run.py``) still fits the code, and docs/testing.md
lists every mutation in it.

Running the mutations takes minutes (``python tests/mutation/run.py``); checking that each
snippet is still found exactly once in its file, and that each named test still exists, takes
milliseconds: this test makes a refactor that moves a durability step update the table (and
re-run it) instead of letting it silently rot.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutation_run", ROOT / "tests/mutation/run.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_the_mutation_table_is_not_stale() -> None:
    run = _table()
    assert run.stale() == [], (
        "tests/mutation/run.py no longer fits the code: update the snippets or test names, "
        "run it, and update docs/testing.md"
    )
    assert len(run.MUTATIONS) >= 30


def test_the_stale_check_names_a_missing_snippet(tmp_path: Path) -> None:
    run = _table()
    m = run.Mutation("x", "wal/log/storage.py", "step", "no such code\n", "pass\n", ("t.py::f",))
    problems = run.stale(ROOT, (m,))
    assert "x: snippet not found in wal/log/storage.py -- the table is stale" in problems
    assert any("test t.py::f does not exist" in p for p in problems)


def test_docs_testing_lists_every_mutation() -> None:
    doc = (ROOT / "docs/testing.md").read_text()
    missing = [m.id for m in _table().MUTATIONS if f"`{m.id}`" not in doc]
    assert missing == [], f"docs/testing.md does not list {missing}"
