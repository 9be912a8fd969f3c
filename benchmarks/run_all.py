# Reproduce: python benchmarks/run_all.py --full --out benchmarks/results
#   (--medium: about two minutes; --quick: seconds, rough, what CI's smoke test runs)
"""Every benchmark of atb-wal in ONE run on ONE disk, printed as ONE table.

The disk's limit, the peers and the log are measured in the same run, in the same directory,
so they can be compared as ratios: shared machines are noisy, and an absolute figure from
another run means little. The limit is measured again at the end to show the drift.

Writes to ``--out``: ``results.md`` (the table printed on stdout, then issue 22's table of
the critical calls end to end with p50/p90/p99/max), ``results.json`` (every measurement, the
targets, the machine), ``throughput.png`` (throughput against concurrency and against batch
size) and ``latency.png`` (latency percentiles per call path); the plots need matplotlib:
``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/peers.py

from calls import plot_latency
from drain import measure_drain, pg_url_for_bench
from peers import PEERS_INSTALLED, bench_lmdb, bench_persist_queue, bench_plyvel, bench_rocksdict
from read_during_drain import measure as measure_reads

from wal.tools.bench import (
    BenchSizes,
    DiskBenchResult,
    Measurement,
    Spec,
    bench_create,
    bench_drain_latency,
    bench_manager_async,
    bench_raw,
    bench_raw_preallocated,
    bench_recovery,
    bench_rss,
    bench_wal_async,
    build_log,
    call_ratios,
    calls_markdown,
    disk_specs,
    fresh_dir,
    machine_info,
    merge_rounds,
    run_call_bench,
    run_interleaved,
    sqlite_specs,
    trade_line_bytes,
)
from wal.tools.bench_calls import call_row_names, drop_pg_database, fresh_pg_database

ROUNDS = {"quick": 1, "medium": 5, "full": 5}

GROUP_ORDER = ["limit", "peer", "this project", "recovery", "drain", "latency", "memory"]
DRAIN_ENTRIES = {"quick": 300, "medium": 20_000, "full": 100_000}
# reads during a drain (issues 10 and 22): get_balance() while this many pending updates drain
READ_DRAIN_ENTRIES = {"quick": 300, "medium": 20_000, "full": 100_000}

# Issue 22's rows: the public calls end to end and the same work in the database alone.
CALL_ROWS = call_row_names(pg=True)
# Every row a run produces, by name (the smoke test checks them all).
ROW_NAMES = [
    "raw_per_record",
    "raw_batch_64",
    "raw_batch_1000",
    "sqlite_full_1",
    "sqlite_full_8",
    "persist_queue_1",
    "persist_queue_8",
    "wal_always_1",
    "wal_always_8",
    "wal_always_64",
    "wal_many_64",
    "wal_many_1000",
    "wal_interval_1",
    "recovery_open",
    "append_idle",
    "append_during_drain",
    "rss_pending",
    "raw_per_record_end",
    "drain_sqlite",
    "drain_postgresql",
    "reads_during_drain_sqlite",
    "reads_during_drain_postgresql",
    "raw_prealloc_per_record",
    "entry_create",
    "wal_async_64",
    "wal_async_256",
    "manager_async_256",
    # issue 22: the critical calls end to end, beside the database alone (wal.tools.bench_calls)
    *CALL_ROWS,
]
# The C peers (pip install -e '.[peers]'): measured when installed.
PEER_ROWS = [f"{p}_{t}" for p in ("plyvel", "rocksdict", "lmdb") for t in (1, 8, 64)]


def run(
    size: str, rounds: int, work: Path, entries: int | None, say: Callable[[str], None]
) -> DiskBenchResult:
    sizes = BenchSizes.preset(size)
    n_log = entries if entries is not None else sizes.recovery_entries
    result = DiskBenchResult(str(work), size, trade_line_bytes(), machine=machine_info(work))
    result.machine["loadavg_start"] = result.machine.pop("loadavg")
    result.machine["rounds"] = rounds
    rows = result.measurements
    t0 = time.monotonic()

    say(f"limit, peers and this project: {rounds} interleaved round(s) ({size})")
    n_peer = max(8, sizes.peer_inserts // rounds)
    specs: list[Spec] = [
        *disk_specs(work, sizes, rounds),
        *sqlite_specs(work, sizes, rounds),
        ("persist_queue_1", lambda: bench_persist_queue(work, 1, n_peer)),
        ("persist_queue_8", lambda: bench_persist_queue(work, 8, n_peer)),
        (
            "raw_prealloc_per_record",
            lambda: bench_raw_preallocated(
                work, max(1, sizes.raw_records // rounds), trade_line_bytes()
            ),
        ),
        ("entry_create", lambda: bench_create(max(1000, sizes.appends_64 // rounds))),
        ("wal_async_64", lambda: bench_wal_async(work, 64, max(64, sizes.appends_64 // rounds))),
        (
            "wal_async_256",
            lambda: bench_wal_async(work, 256, max(256, 2 * sizes.appends_64 // rounds)),
        ),
        (
            "manager_async_256",
            lambda: bench_manager_async(work, 256, max(256, 2 * sizes.appends_64 // rounds)),
        ),
    ]
    if PEERS_INSTALLED:
        per_thread = {1: sizes.appends_1, 8: sizes.appends_8, 64: sizes.appends_64}
        for name, bench in (("plyvel", bench_plyvel), ("rocksdict", bench_rocksdict)):
            for t, total in per_thread.items():
                n = max(t, total // rounds)
                specs.append((f"{name}_{t}", lambda b=bench, t=t, n=n: b(work, t, n)))
        for t in (1, 8, 64):  # LMDB serializes its writers: the peer-insert count suffices
            n = max(t, sizes.peer_inserts // rounds)
            specs.append((f"lmdb_{t}", lambda t=t, n=n: bench_lmdb(work, t, n)))
    else:
        say("the C peers are not installed (pip install -e '.[peers]'): their rows are skipped")
    rows.extend(run_interleaved(specs, rounds, say))

    pg_url = pg_url_for_bench(work / "pg")
    if pg_url is None:
        say("no pgserver and no WAL_TEST_PG_DSN: the PostgreSQL rows are skipped")
    say(f"critical calls end to end, beside the database alone: {rounds} interleaved round(s)")
    rows.extend(run_call_bench(work, size, rounds, pg_url, say, limit=False))

    say(f"recovery: building a log of {n_log:,} pending entries (untimed)")
    log_dir = build_log(work / "recovery-log", n_log)
    rows.append(bench_recovery(log_dir, n_log, rounds=min(rounds, 3)))
    say(f"  recovery_open {rows[-1].per_s:,.0f}/s")
    say("memory: a subprocess opens the log and iterates it")
    rows.append(bench_rss(log_dir, n_log))
    say(f"  rss_pending {rows[-1].describe()}")
    shutil.rmtree(log_dir)

    n_drain = DRAIN_ENTRIES[size]
    for name, label, url in (
        ("drain_sqlite", "SQLite (WAL, synchronous=FULL)", f"sqlite:///{work / 'drain.db'}"),
        ("drain_postgresql", "PostgreSQL (pgserver, local socket)", None),
    ):
        if url is None:
            url = pg_url
            if url is None:
                say("  drain into PostgreSQL skipped: no pgserver and no WAL_TEST_PG_DSN")
                continue
        say(f"drain: {n_drain:,} pending entries applied exactly once into {label}")
        d = measure_drain(url, n_drain, fresh_dir(work, name))
        m = Measurement(
            name,
            "drain",
            f"WALManager.force_sync into {label}, exactly once",
            ops=n_drain,
            seconds=d["seconds"],
            batch=500,
            per_s=d["entries_per_second"],
        )
        m.note = f"ledger rows = trades = entries: {d['exactly_once']}"
        rows.append(m)
        say(f"  {name} {m.per_s:,.0f}/s")

    n_reads = READ_DRAIN_ENTRIES[size]
    for name, label in (
        ("reads_during_drain_sqlite", "SQLite (WAL, synchronous=FULL)"),
        ("reads_during_drain_postgresql", "PostgreSQL (pgserver, local socket)"),
    ):
        if name.endswith("sqlite"):
            url: str | None = f"sqlite:///{work / 'reads.db'}"
        else:
            url = None if pg_url is None else fresh_pg_database(pg_url)
            if url is None:
                say("  reads during a PostgreSQL drain skipped: no pgserver, no WAL_TEST_PG_DSN")
                continue
        say(f"reads: get_balance() while {n_reads:,} pending updates drain into {label}")
        try:
            rows.append(read_row(name, label, measure_reads(url, n_reads, fresh_dir(work, name))))
        finally:
            if not name.endswith("sqlite"):
                drop_pg_database(url)
        say(f"  {name} p99 {rows[-1].p99_us:,.0f} µs")

    say("latency: append alone, then during a drain, interleaved")
    pairs = [
        bench_drain_latency(work, max(10, sizes.drain_appends // rounds)) for _ in range(rounds)
    ]
    rows.append(merge_rounds([idle for idle, _ in pairs]))
    rows.append(merge_rounds([busy for _, busy in pairs]))

    end = bench_raw(work, sizes.raw_records // rounds, 1, result.record_bytes)
    end.name = "raw_per_record_end"
    end.label = "os.write + fdatasync per record, again at the end"
    first = result.rate("raw_per_record")
    if first and end.per_s:
        end.note = f"{end.per_s / first - 1:+.0%} from the start's median"
    rows.append(end)
    rows.sort(key=lambda m: GROUP_ORDER.index(m.group))
    result.machine["loadavg_end"] = machine_info(work)["loadavg"]
    result.machine["seconds"] = round(time.monotonic() - t0, 1)
    return result


def read_row(name: str, label: str, r: dict[str, Any]) -> Measurement:
    """One "reads during a drain" row from ``read_during_drain.measure``'s figures."""
    m = Measurement(
        name,
        "latency",
        f"get_balance() while {r['entries']:,} pending updates drain into {label}",
        ops=r["reads"],
        seconds=r["drain_s"],
        per_s=r["reads"] / r["drain_s"],
        p50_us=r["p50_us"],
        p99_us=r["p99_us"],
    )
    m.extra = {k: v for k, v in r.items() if isinstance(v, int | float)}
    m.note = (
        f"{r['wrong_reads']} wrong read(s) of {r['reads']:,}; max {r['max_us']:,.0f} µs; "
        f"drain {r['drain_s']:.1f} s, open {r['open_s']:.2f} s; the first read settles every "
        f"maybe-applied entry in {r['option_a_first_read_ms']:.1f} ms, later reads "
        f"{r['option_a_later_read_ms']:.2f} ms"
    )
    return m


def plot(result: DiskBenchResult, path: Path) -> bool:
    """Throughput against concurrency and against batch size; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))

    def series(prefix: str, xs: list[int]) -> tuple[list[int], list[float]]:
        px, py = [], []
        for x in xs:
            r = result.rate(f"{prefix}{x}")
            if r:
                px.append(x)
                py.append(r)
        return px, py

    for prefix, label, style in (
        ("wal_always_", 'atb-wal fsync="always"', "o-"),
        ("sqlite_full_", "SQLite WAL synchronous=FULL", "s--"),
        ("persist_queue_", "persist-queue SQLiteAckQueue", "^--"),
    ):
        xs, ys = series(prefix, [1, 8, 64])
        if xs:
            left.plot(xs, ys, style, label=label)
    for name, label in (("raw_per_record", "limit: fdatasync per record"),):
        r = result.rate(name)
        if r:
            left.axhline(r, color="grey", linestyle=":", label=label)
    left.set(xscale="log", yscale="log", xlabel="threads", ylabel="records/s")
    left.set_xticks([1, 8, 64], ["1", "8", "64"])
    left.set_title("durable appends against concurrency")
    left.legend(fontsize=8)

    xs, ys = [], []
    for b, name in ((1, "raw_per_record"), (64, "raw_batch_64"), (1000, "raw_batch_1000")):
        r = result.rate(name)
        if r:
            xs.append(b)
            ys.append(r)
    right.plot(xs, ys, "o:", color="grey", label="limit: write + fdatasync per batch")
    xs, ys = [], []
    for b, name in ((1, "wal_always_1"), (64, "wal_many_64"), (1000, "wal_many_1000")):
        r = result.rate(name)
        if r:
            xs.append(b)
            ys.append(r)
    right.plot(xs, ys, "o-", label="atb-wal append / append_many (1 thread)")
    right.set(xscale="log", yscale="log", xlabel="records per fsync", ylabel="records/s")
    right.set_xticks([1, 64, 1000], ["1", "64", "1000"])
    right.set_title("durable appends against batch size")
    right.legend(fontsize=8)
    fig.suptitle(f"atb-wal, {result.size} run, {result.machine.get('filesystem', '?')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def calls_table(result: DiskBenchResult) -> str:
    """Issue 22's table (p50/p90/p99/max) with the limit beside it, and its targets."""
    rows = [m for m in result.measurements if m.name in CALL_ROWS or m.name == "raw_per_record"]
    return calls_markdown(rows, call_ratios({m.name: m for m in rows}, 64, 256))


def header(result: DiskBenchResult, command: str) -> str:
    m = result.machine
    return "\n".join(
        [
            f"atb-wal benchmarks, {result.size} run, {m.get('when')}: `{command}`",
            "",
            f"Disk: {m.get('filesystem')}; kernel {m.get('kernel')}; {m.get('cpus')} cores; "
            f"Python {m.get('python')}; load average {m.get('loadavg_start')} at the start, "
            f"{m.get('loadavg_end')} at the end; {m.get('seconds')} s in all.",
            f"Records: realistic trades, {result.record_bytes} bytes per framed line "
            "(the limit rows write records of the same size). "
            f"Rates are medians of {m.get('rounds')} interleaved round(s); latencies pool "
            "every round.",
            "",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="size", action="store_const", const="quick")
    size.add_argument("--medium", dest="size", action="store_const", const="medium")
    size.add_argument("--full", dest="size", action="store_const", const="full")
    ap.add_argument("--out", type=Path, required=True, help="where results.* go (created)")
    ap.add_argument("--work-dir", type=Path, help="where to measure (default: inside --out)")
    ap.add_argument("--entries", type=int, help="entries in the recovery/RSS log")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default: 1 quick, 5 else)")
    args = ap.parse_args(argv)
    size_name: str = args.size or "full"
    rounds: int = args.rounds or ROUNDS[size_name]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="atb-wal-bench-", dir=args.work_dir or out))

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        result = run(size_name, rounds, work, args.entries, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = "python benchmarks/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = header(result, command) + result.markdown() + "\n\n" + result.advice() + "\n"
    text += "\n## The critical calls end to end (issue 22)\n\n" + calls_table(result) + "\n"
    print(text, end="")
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    if not plot(result, out / "throughput.png"):
        say("matplotlib is not installed: no plot (pip install -e '.[bench]')")
    calls = [m for m in result.measurements if m.name in CALL_ROWS or m.name == "raw_per_record"]
    plot_latency(calls, out / "latency.png", f"atb-wal critical calls, {result.size} run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
