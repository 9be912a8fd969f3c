#!/usr/bin/env python3
"""The soak: the order and money property tests with random seeds, for a given time.

Usage (from the repository root, in its virtual environment)::

    python tests/soak.py --minutes 30                 # the three property test files
    python tests/soak.py --minutes 5 --test tests/orders/test_property.py
    python tests/soak.py --minutes 30 --json soak.json

CI runs every Hypothesis test derandomized (the ``ci`` profile of ``tests/conftest.py``): the
same examples every time, so it never turns red by chance. The soak is the other half: it
runs pytest on each file in turn, **one process at a time** (never in parallel: the machine is
shared), each run with the ``soak`` profile and a new random ``--hypothesis-seed``, until the
time is up (a run that has started is finished). It prints each run's seed, outcome and
example count, then the examples per test and outcome (counted by Hypothesis's observability
callback, ``WAL_SOAK_COUNTS`` in ``tests/conftest.py``). A failing run prints its seed, the
falsifying example and the command that replays it; every failure found becomes a pinned
``@example`` in its test (docs/testing.md). Exit status 1 if any run failed.

This file is not collected by pytest (its name does not start with ``test_``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = (  # the quicker first: a short soak still runs each file
    "tests/orders/test_property.py",
    "tests/db/test_db_property.py",
    "tests/sync/test_money_model.py",
    "tests/sync/test_overlay_interleavings.py",  # every interleaving of reads and batches
    "tests/sync/test_bad_input.py",  # hostile arguments never become durable
    "tests/test_binding.py",  # a critical call's arguments bound exactly as Signature.bind
)


def one_run(test: str, seed: int, timeout: float) -> tuple[int, list[dict[str, object]], str]:
    """pytest on ``test`` with the soak profile and ``seed``: (exit code, counts, output)."""
    with tempfile.TemporaryDirectory(prefix="atb-soak-") as d:
        counts = Path(d) / "counts.json"
        env = dict(os.environ, WAL_HYPOTHESIS_PROFILE="soak", WAL_SOAK_COUNTS=str(counts))
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--hypothesis-seed={seed}",
            test,
        ]
        try:
            p = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
            )
            rc, out = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as exc:
            rc, out = -1, f"no result after {timeout:.0f} s\n{exc.stdout or ''}"
        rows = json.loads(counts.read_text()) if counts.exists() else []
    return rc, rows, out


def falsifying(out: str) -> str:
    """The falsifying example(s) and replay hints of a failed run's output."""
    lines = out.splitlines()
    keep = [
        i
        for i, ln in enumerate(lines)
        if "Falsifying" in ln or "reproduce_failure" in ln or ln.startswith("FAILED")
    ]
    if not keep:
        return "\n".join(lines[-40:])
    first = max(0, keep[0] - 2)
    return "\n".join(lines[first : keep[-1] + 25])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, required=True, help="how long to keep starting runs")
    ap.add_argument("--test", action="append", default=[], help="test files (default: three)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per pytest run")
    ap.add_argument("--json", type=Path, help="write the runs and the counts here")
    args = ap.parse_args(argv)
    tests = args.test or list(TESTS)
    rng = random.SystemRandom()
    deadline = time.monotonic() + args.minutes * 60
    totals: Counter[tuple[str, str]] = Counter()
    runs: list[dict[str, object]] = []
    failed = 0
    k = 0
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        test = tests[k % len(tests)]
        k += 1
        seed = rng.getrandbits(64)
        started = time.monotonic()
        rc, rows, out = one_run(test, seed, args.timeout)
        n = sum(int(str(r["examples"])) for r in rows)
        for r in rows:
            name = str(r["test"]).rpartition("::")[2]  # a stateful test is "run_state_machine"
            totals[(f"{test}::{name}", str(r["status"]))] += int(str(r["examples"]))
        outcome = "passed" if rc == 0 else f"FAILED (exit {rc})"
        print(
            f"[{k}] {test} seed={seed}: {outcome} in {time.monotonic() - started:.0f} s, "
            f"{n} examples",
            flush=True,
        )
        runs.append({"test": test, "seed": seed, "exit": rc, "examples": n, "counts": rows})
        if rc != 0:
            failed += 1
            print(falsifying(out), flush=True)
            print(
                f"replay: WAL_HYPOTHESIS_PROFILE=soak python -m pytest {test} "
                f"--hypothesis-seed={seed}\n",
                flush=True,
            )
    minutes = (time.monotonic() - t0) / 60
    print(f"\nsoak: {k} runs in {minutes:.1f} min, {failed} failed; examples per test:")
    for (test, status), n in sorted(totals.items()):
        print(f"  {test}  {status}: {n}")
    print(f"  total: {sum(totals.values())}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "minutes": round(minutes, 1),
                    "runs": runs,
                    "totals": [
                        {"test": t, "status": s, "examples": n} for (t, s), n in totals.items()
                    ],
                },
                indent=1,
            )
            + "\n"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
