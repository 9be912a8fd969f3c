# Reproduce: python benchmarks/calls.py --medium --out benchmarks/results-calls
#   (--quick: seconds, rough; --full: minutes; --no-pg: without PostgreSQL)
"""Issue 22's table: what a critical call costs end to end, beside the database alone.

In one run, on one disk, in interleaved rounds: ``DurableDatabaseManager.log_trade`` and
``atomic_balance_update`` (SQLite up) from 1 and 64 threads, ``log_trade_async`` from 256
coroutines, and ``log_trade`` with PostgreSQL up from 1 and 64 threads; beside them SQLite
(WAL, ``synchronous=FULL``) and PostgreSQL (``synchronous_commit=on``) doing one INSERT +
COMMIT per call directly, and the disk's raw write + fdatasync; then ``OrderManager.submit``
against the in-process ``PaperBroker``. Entry creation (binding, ids, the entry) is inside
every timed call. PostgreSQL is a throwaway pgserver, or ``WAL_TEST_PG_DSN``.

Writes to ``--out``: ``calls.md`` (the table printed on stdout, p50/p90/p99/max and calls/s,
then the issue-22 targets as measured ratios), ``calls.json`` and ``latency.png`` (latency
percentiles per path; needs matplotlib: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/drain.py

from drain import pg_url_for_bench

from wal.tools.bench import (
    Measurement,
    call_ratios,
    calls_markdown,
    machine_info,
    run_call_bench,
)
from wal.tools.bench_calls import COROUTINES, THREADS, spread

ROUNDS = {"quick": 1, "medium": 3, "full": 5}


def plot_latency(rows: list[Measurement], path: Path, title: str) -> bool:
    """p50, p90, p99 and max per path, one horizontal group of bars each (log scale);
    False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shown = [(m, spread(m)) for m in rows if m.samples_ns]
    if not shown:
        return False
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(shown) + 1.5))
    keys = ("p50", "p90", "p99", "max")
    height = 0.2
    for k, key in enumerate(keys):
        ys = [i + (k - 1.5) * height for i in range(len(shown))]
        ax.barh(ys, [s[key] for _, s in shown], height, label=key)
    ax.set_yticks(range(len(shown)), [f"{m.label}, {m.threads}" for m, _ in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set(xscale="log", xlabel="latency per call, µs (log scale)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="size", action="store_const", const="quick")
    size.add_argument("--medium", dest="size", action="store_const", const="medium")
    size.add_argument("--full", dest="size", action="store_const", const="full")
    ap.add_argument("--out", type=Path, required=True, help="where calls.* go (created)")
    ap.add_argument("--work-dir", type=Path, help="where to measure (default: inside --out)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default: 1, 3 or 5)")
    ap.add_argument("--no-pg", action="store_true", help="skip the PostgreSQL rows")
    args = ap.parse_args(argv)
    size_name: str = args.size or "medium"
    rounds: int = args.rounds or ROUNDS[size_name]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="atb-wal-calls-", dir=args.work_dir or out))

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    machine = machine_info(work)
    t0 = time.monotonic()
    try:
        pg_url = None if args.no_pg else pg_url_for_bench(work / "pg")
        if pg_url is None and not args.no_pg:
            say("no pgserver and no WAL_TEST_PG_DSN: the PostgreSQL rows are skipped")
        rows = run_call_bench(work, size_name, rounds, pg_url, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = call_ratios({m.name: m for m in rows}, THREADS, COROUTINES)
    command = "python benchmarks/calls.py " + " ".join(argv if argv is not None else sys.argv[1:])
    head = (
        f"atb-wal critical calls, {size_name} run, {machine['when']}: `{command}`\n\n"
        f"Disk: {machine['filesystem']}; kernel {machine['kernel']}; {machine['cpus']} cores; "
        f"Python {machine['python']}; load average {machine['loadavg']} at the start, "
        f"{machine_info(out)['loadavg']} at the end; {time.monotonic() - t0:.0f} s in all. "
        f"Rates are medians of {rounds} interleaved round(s); latencies pool every round.\n\n"
    )
    text = head + calls_markdown(rows, ratios) + "\n"
    print(text, end="")
    (out / "calls.md").write_text(text)
    data = {
        "machine": machine,
        "measurements": [m.to_dict() for m in rows],
        "targets": [
            {"target": r.target, "measured": r.measured, "required": r.required, "met": r.met}
            for r in ratios
        ],
    }
    (out / "calls.json").write_text(json.dumps(data, indent=2) + "\n")
    if not plot_latency(rows, out / "latency.png", f"atb-wal critical calls, {size_name} run"):
        say("matplotlib is not installed: no plot (pip install -e '.[bench]')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
