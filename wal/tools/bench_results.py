"""Benchmark results: one measured row, the targets (issues 5 and 15), and their report.

``wal.tools.bench`` measures; this module holds what it measured (``Measurement``), the run
(``DiskBenchResult``: table, advice sentence, JSON) and the targets checked against it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "DiskBenchResult",
    "Group",
    "Measurement",
    "TargetResult",
    "evaluate_targets",
    "latency_row",
    "merge_rounds",
    "percentile",
]


Group = Literal["limit", "peer", "this project", "recovery", "drain", "latency", "memory"]


# ---------------------------------------------------------------------------- results


@dataclass(slots=True)
class Measurement:
    """One row of the results table (possibly the median of several interleaved rounds)."""

    name: str  # stable key, e.g. "wal_always_8"
    group: Group
    label: str  # what was measured, in words
    ops: int = 0  # records (entries) done, over all rounds
    seconds: float = 0.0  # over all rounds
    threads: int = 1
    batch: int = 1
    per_s: float | None = None  # records (entries) per second; the median over rounds
    p50_us: float | None = None  # per-record latency (rows where one call is one record)
    p99_us: float | None = None
    call_p50_us: float | None = None  # per-call latency of batch rows
    rounds: int = 1
    note: str = ""  # fixed remarks; describe() adds the measured ones
    extra: dict[str, Any] = field(default_factory=dict)
    latency: Literal["record", "call", "none"] = "record"
    samples_ns: list[int] = field(default_factory=list, repr=False)  # not in to_dict()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["samples_ns"]
        d["description"] = self.describe()
        return d

    def finish(self) -> Measurement:
        """Compute the latency columns from ``samples_ns`` (sorts them)."""
        lat = self.samples_ns
        lat.sort()
        if not lat or self.latency == "none":
            return self
        if self.latency == "record":
            self.p50_us = percentile(lat, 0.50)
            self.p99_us = percentile(lat, 0.99)
        else:
            self.call_p50_us = percentile(lat, 0.50)
        return self

    def describe(self) -> str:
        """The note column: fixed remarks plus what the figures mean."""
        parts: list[str] = []
        fsyncs = self.extra.get("fsyncs")
        if self.extra.get("fsync") == "always" and fsyncs:
            parts.append(f"{self.ops / fsyncs:.1f} entries per fsync")
        if self.call_p50_us is not None:
            parts.append(f"per call: p50 {self.call_p50_us:,.0f} µs")
        if "drained" in self.extra:
            parts.append(f"drained {self.extra['drained']:,}")
        if self.note:
            parts.append(self.note)
        spread = self.extra.get("per_s_rounds")
        if self.rounds > 1 and spread:
            parts.append(
                f"median of {self.rounds} rounds, {min(spread):,.0f} to {max(spread):,.0f}/s"
            )
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class TargetResult:
    """One target: what it asks, the measured ratio or value, and whether it was met."""

    target: str
    measured: float | None  # None: a row it needs was not measured
    required: float
    unit: str  # "x" for a ratio, "entries/s", "MB"
    met: bool | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class DiskBenchResult:
    """Everything one run measured, on one directory."""

    directory: str
    size: str  # the preset
    record_bytes: int  # bytes per record (the framed trade line)
    measurements: list[Measurement] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Measurement | None:
        for m in self.measurements:
            if m.name == name:
                return m
        return None

    def rate(self, name: str) -> float | None:
        m = self.get(name)
        return None if m is None else m.per_s

    def targets(self) -> list[TargetResult]:
        return evaluate_targets(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "size": self.size,
            "record_bytes": self.record_bytes,
            "machine": self.machine,
            "measurements": [m.to_dict() for m in self.measurements],
            "targets": [t.to_dict() for t in self.targets()],
            "advice": self.advice(),
            "recommendation": self.recommendation(),
        }

    def best_concurrent(self) -> Measurement | None:
        """The faster of the 8- and 64-writer durable append rows (None if neither ran)."""
        best: Measurement | None = None
        for k in (8, 64):
            m = self.get(f"wal_always_{k}")
            if m is not None and m.per_s and (best is None or m.per_s > (best.per_s or 0)):
                best = m
        return best

    def advice(self) -> str:
        """A plain sentence: the cost of an fsync per trade, and what group commit gives."""
        parts: list[str] = []
        one = self.get("wal_always_1")
        raw = self.get("raw_per_record")
        if one is not None and one.p50_us is not None and one.per_s:
            s = (
                f'a durable append (fsync="always") takes {one.p50_us:,.0f} µs per trade '
                f"at the median ({one.per_s:,.0f} trades/s from one thread"
            )
            if raw is not None and raw.per_s and raw.p50_us is not None:
                s += (
                    f"; the disk's own write + fdatasync takes {raw.p50_us:,.0f} µs, "
                    f"{raw.per_s:,.0f}/s"
                )
            parts.append(s + ")")
        best = self.best_concurrent()
        if best is not None and best.per_s:
            parts.append(
                f"with {best.threads} concurrent writers group commit gives "
                f"{best.per_s:,.0f} trades/s, each still durable before it returns"
            )
        many = self.get("wal_many_1000")
        if many is not None and many.per_s:
            parts.append(f"append_many(1000) reaches {many.per_s:,.0f} entries/s")
        iv = self.get("wal_interval_1")
        if iv is not None and iv.per_s:
            parts.append(
                f'fsync="interval" gives {iv.per_s:,.0f}/s but a power loss can lose the last '
                f"{iv.extra.get('interval_ms', 10):g} ms"
            )
        if not parts:
            return "nothing was measured"
        return "Here " + "; ".join(parts) + "."

    def call_cost(self) -> list[str]:
        """What a critical call costs here, and what the database alone would cost (issue 22's
        rows ``ddb_*_sqlite_*`` against ``sqlite_direct_*``; empty when they were not run)."""
        out: list[str] = []
        for t in sorted({m.threads for m in self.measurements if m.name.startswith("ddb_")}):
            direct = self.get(f"sqlite_direct_{t}")
            for op, call in (("trade", "log_trade"), ("balance", "atomic_balance_update")):
                m = self.get(f"ddb_{op}_sqlite_{t}")
                if m is None or not m.per_s or m.p50_us is None:
                    continue
                s = (
                    f"A critical call, {call} with SQLite up, from {t} thread(s): p50 "
                    f"{m.p50_us:,.0f} µs, {m.per_s:,.0f} calls/s"
                )
                if direct is not None and direct.per_s and direct.p50_us is not None:
                    s += (
                        f"; the same INSERT + COMMIT in SQLite alone (WAL, synchronous=FULL): "
                        f"p50 {direct.p50_us:,.0f} µs, {direct.per_s:,.0f}/s "
                        f"(the call is {m.per_s / direct.per_s:.2f}x of it)"
                    )
                if m.note:
                    s += f"; {m.note}"
                out.append(s + ".")
        return out

    def recommendation(self) -> list[str]:
        """What to choose on this disk, each line with the cost measured in this run."""
        out: list[str] = self.call_cost()
        one = self.get("wal_always_1")
        raw = self.get("raw_per_record")
        if one is not None and one.per_s and one.p50_us is not None:
            p99 = "" if one.p99_us is None else f", p99 {one.p99_us:,.0f} µs"
            vs = ""
            if raw is not None and raw.per_s:
                vs = f", {one.per_s / raw.per_s:.2f}x this disk's own write+fdatasync"
            out.append(
                f"WAL_FSYNC=always (the default; keep it for balances and trades): every trade "
                f"is on disk before the call returns; p50 {one.p50_us:,.0f} µs{p99} per trade, "
                f"up to {one.per_s:,.0f} trades/s from one thread{vs}."
            )
        best = self.best_concurrent()
        if best is not None and best.per_s:
            out.append(
                f"Several threads or coroutines trading at once share one fsync (group "
                f"commit): {best.per_s:,.0f} trades/s with {best.threads} writers, each still "
                "durable before it returns. No batching is needed for that."
            )
        many = self.get("wal_many_1000")
        if many is not None and many.per_s:
            out.append(
                f"Bulk loads (a backfill, an import): append_many of 1,000 entries per call "
                f"gives {many.per_s:,.0f} entries/s, one fsync per call."
            )
        iv = self.get("wal_interval_1")
        if iv is not None and iv.per_s:
            ms = float(iv.extra.get("interval_ms", 10))
            out.append(
                f"WAL_FSYNC=interval gives {iv.per_s:,.0f}/s from one thread, but a power loss "
                f"can lose the last {ms:g} ms of acknowledged trades: not for money."
            )
        return out or ["nothing was measured"]

    def report(self) -> str:
        """For the user of ``atb wal bench``: what was measured, then what to choose."""
        lines = [f"measured in {self.directory} ({self.size}, {self.record_bytes} B per trade)", ""]
        lines.append(f"{'what':<44} {'threads':>7} {'per second':>12} {'p50 µs':>8} {'p99 µs':>8}")
        for m in self.measurements:
            lines.append(
                f"{m.label[:44]:<44} {m.threads:>7} {_fmt(m.per_s, 0):>12} "
                f"{_fmt(m.p50_us, 0):>8} {_fmt(m.p99_us, 0):>8}"
            )
        lines += ["", "what to choose on this disk:"]
        lines += [f"- {line}" for line in self.recommendation()]
        return "\n".join(lines)

    def markdown(self) -> str:
        """The results table, then the targets table, as markdown."""
        lines = [
            "| group | what | threads | batch | records/s | p50 µs | p99 µs | note |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for m in self.measurements:
            lines.append(
                f"| {m.group} | {m.label} | {m.threads} | {m.batch} | {_fmt(m.per_s, 0)} "
                f"| {_fmt(m.p50_us, 0)} | {_fmt(m.p99_us, 0)} | {m.describe()} |"
            )
        lines += ["", "| target | measured | required | met |", "|---|---:|---:|---|"]
        for t in self.targets():
            got = "not measured" if t.measured is None else _fmt_target(t.measured, t.unit)
            met = "n/a" if t.met is None else ("met" if t.met else "**not met**")
            lines.append(f"| {t.target} | {got} | {_fmt_target(t.required, t.unit)} | {met} |")
        return "\n".join(lines)


def _fmt(v: float | None, digits: int) -> str:
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


def _fmt_target(v: float, unit: str) -> str:
    if unit == "x":
        return f"{v:.2f}x"
    return f"{v:,.0f} {unit}"


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of sorted nanosecond latencies, in microseconds."""
    if not sorted_ns:
        return float("nan")
    k = max(0, min(len(sorted_ns) - 1, math.ceil(q * len(sorted_ns)) - 1))
    return sorted_ns[k] / 1000.0


def latency_row(m: Measurement, lat_ns: list[int]) -> Measurement:
    """Attach the latency samples (ns) to ``m`` and compute its latency columns."""
    m.samples_ns = lat_ns
    return m.finish()


def merge_rounds(rounds: list[Measurement]) -> Measurement:
    """One row from interleaved rounds of the same measurement: the median rate, pooled
    latencies, summed counters. Interleaving spreads the machine's noise over every row."""
    first = rounds[0]
    m = Measurement(
        first.name,
        first.group,
        first.label,
        sum(r.ops for r in rounds),
        sum(r.seconds for r in rounds),
        first.threads,
        first.batch,
        rounds=len(rounds),
        note=first.note,
        extra=dict(first.extra),
        latency=first.latency,
    )
    rates = [r.per_s for r in rounds if r.per_s is not None]
    if rates:
        m.per_s = statistics.median(rates)
        m.extra["per_s_rounds"] = [round(x, 1) for x in rates]
    for key in ("fsyncs", "drained"):
        if key in first.extra:
            m.extra[key] = sum(int(r.extra.get(key) or 0) for r in rounds)
    m.samples_ns = [x for r in rounds for x in r.samples_ns]
    return m.finish()


# ---------------------------------------------------------------------------- targets


def evaluate_targets(r: DiskBenchResult) -> list[TargetResult]:
    """The project's performance targets, each against rows measured in the same run."""
    out: list[TargetResult] = []

    def ratio(target: str, num: str, den: str, need: float) -> None:
        a, b = r.rate(num), r.rate(den)
        if a is None or b is None or b == 0:
            out.append(TargetResult(target, None, need, "x", None, f"{num} / {den}"))
            return
        v = a / b
        out.append(TargetResult(target, v, need, "x", v >= need, f"{a:,.0f} / {b:,.0f} per s"))

    # issue 15's targets: LevelDB (plyvel, C++, its own group commit) is the peer to beat
    ratio("1 thread ≥ 1.0x raw per-record", "wal_always_1", "raw_per_record", 1.0)
    ratio(
        "1 thread ≥ 0.85x write+fdatasync into a preallocated file",
        "wal_always_1",
        "raw_prealloc_per_record",
        0.85,
    )
    ratio("8 threads ≥ 1.0x plyvel at 8 threads", "wal_always_8", "plyvel_8", 1.0)
    ratio("64 threads ≥ 0.8x plyvel at 64 threads", "wal_always_64", "plyvel_64", 0.8)
    ratio("asyncio 64 coroutines ≥ 1.0x plyvel at 64 threads", "wal_async_64", "plyvel_64", 1.0)
    ratio("asyncio 256 coroutines ≥ 1.5x plyvel at 64 threads", "wal_async_256", "plyvel_64", 1.5)
    ratio(
        "manager write_async, database down, 256 coroutines ≥ 0.5x append_async",
        "manager_async_256",
        "wal_async_256",
        0.5,
    )

    def absolute(target: str, name: str, need: float, unit: str) -> None:
        v = r.rate(name)
        ok = None if v is None else v >= need
        out.append(TargetResult(target, v, need, unit, ok, name))

    absolute("WALEntry.create ≤ 5 µs (≥ 200,000/s)", "entry_create", 200_000, "entries/s")
    absolute("append_many(1000) ≥ 150,000 entries/s", "wal_many_1000", 150_000, "entries/s")
    absolute("recovery ≥ 500,000 entries/s", "recovery_open", 500_000, "entries/s")
    if r.get("drain_sqlite") is not None:  # measured by benchmarks/run_all.py, not `atb wal bench`
        absolute("drain into SQLite ≥ 20,000 entries/s", "drain_sqlite", 20_000, "entries/s")
    if r.get("drain_postgresql") is not None:
        absolute(
            "drain into PostgreSQL ≥ 10,000 entries/s", "drain_postgresql", 10_000, "entries/s"
        )

    for name, db, need in (  # measured by benchmarks/run_all.py, not `atb wal bench`
        ("reads_during_drain_sqlite", "SQLite", 5_000.0),
        ("reads_during_drain_postgresql", "PostgreSQL", 20_000.0),
    ):
        m = r.get(name)
        if m is None:
            continue
        n = int(m.extra.get("entries", m.ops))
        wrong = int(m.extra.get("wrong_reads", 0))
        out.append(
            TargetResult(
                f"get_balance p99 during a {n:,}-entry drain into {db} ≤ {need / 1000:,.0f} ms",
                m.p99_us,
                need,
                "µs",
                None if m.p99_us is None else m.p99_us <= need and wrong == 0,
                f"{name}: {wrong} wrong read(s)",
            )
        )
    idle, busy = r.get("append_idle"), r.get("append_during_drain")
    if idle is None or busy is None or not idle.p99_us or busy.p99_us is None:
        out.append(TargetResult("append p99 during drain ≤ 2x idle p99", None, 2, "x", None, ""))
    else:
        v = busy.p99_us / idle.p99_us
        out.append(
            TargetResult(
                "append p99 during drain ≤ 2x idle p99",
                v,
                2,
                "x",
                v <= 2,
                f"{busy.p99_us:,.0f} / {idle.p99_us:,.0f} µs",
            )
        )
    rss = r.get("rss_pending")
    entries = rss.ops if rss is not None else 0
    name = f"RSS with {entries:,} pending ≤ 200 MB" if rss else "RSS with 1M pending ≤ 200 MB"
    if rss is None:
        out.append(TargetResult(name, None, 200, "MB", None, ""))
    else:
        mb = float(rss.extra["rss_mb"])
        out.append(TargetResult(name, mb, 200, "MB", mb <= 200, "VmHWM of a subprocess"))
    return out
