"""The code examples of the README and the docs run, as a reader would run them."""

from __future__ import annotations

import re
import runpy
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", "docs/live_trading.md", "docs/wal.md"]


def python_blocks(page: str) -> list[str]:
    text = (ROOT / page).read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.parametrize("page", PAGES)
def test_page_has_examples(page: str) -> None:
    assert python_blocks(page), f"{page} has no python example"


@pytest.mark.parametrize(
    ("page", "index"),
    [(p, i) for p in PAGES for i in range(len(python_blocks(p)))],
)
def test_example_runs(
    page: str, index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # run where a newcomer would: a fresh working directory (the examples use data/ paths)
    monkeypatch.chdir(tmp_path)
    for var in ("WAL_DIR", "DATABASE_URL", "WAL_ENABLED"):
        monkeypatch.delenv(var, raising=False)
    # the examples make their own temporary directories: keep them inside tmp_path, so that
    # the suite leaves nothing behind in the machine's /tmp
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    script = tmp_path / "example.py"
    script.write_text(python_blocks(page)[index])
    runpy.run_path(str(script), run_name="__main__")
