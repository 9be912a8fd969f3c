"""The README's order-service block runs as written (on a free port, in a fresh directory)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from wal.db.versioning import HEAD

ROOT = Path(__file__).resolve().parents[2]


def _block() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- readme-service:.*?-->\n```bash\n(.*?)```", text, re.S)
    assert m, "README.md lost its order-service block"
    return m.group(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_readme_service_commands_run(tmp_path: Path) -> None:
    script = _block().replace("8080", str(_free_port()))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("DATABASE_URL", None)
    env.pop("WAL_DIR", None)
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script + "\nwait\n"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"state":"filled"' in r.stdout
    assert '"idempotency_key":"order-1"' in r.stdout
    assert f"revision none -> {HEAD}" in r.stdout
