"""Per-record write + fdatasync into a growing file vs a preallocated one, on this disk.

Reproduce: ``python benchmarks/prealloc.py [--dir DIR] [--records 2000] [--rounds 5]``

Four ways to give a segment its space, measured in interleaved rounds (the machine is shared:
every row gets the same share of good and bad moments; compare ratios, not absolute rates):

* ``append``: ``O_APPEND`` writes, the file grows: each fdatasync also commits the new size
  (what the log did before preallocation);
* ``fallocate``: ``posix_fallocate`` of the whole file first, then ``pwrite`` + fdatasync: the
  size is durable, but each block's first write converts an unwritten extent (metadata);
* ``zero``: the whole file written with zeros and fdatasynced first (PostgreSQL's
  ``wal_init_zero``): the writes are pure data overwrites;
* ``recycled``: a file that held an old segment's records (segment recycling), overwritten.

It also times the preparation of one segment of ``--segment-mib`` each way (what the log's
background step pays per rotation).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

RECORD = (b"x" * 199) + b"\n"  # about a trade entry's line


def _prepare(path: Path, how: str, size: int) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    if how == "fallocate":
        os.posix_fallocate(fd, 0, size)
    elif how in ("zero", "recycled"):
        block = (b"\0" if how == "zero" else RECORD * (65536 // len(RECORD) + 1))[:65536]
        block = block.ljust(65536, b"\0")
        done = 0
        while done < size:
            done += os.write(fd, block[: min(len(block), size - done)])
    os.fsync(fd)  # the space (and the size) durable before the timed writes
    return fd


def per_record(directory: Path, how: str, n: int) -> float:
    """Records per second, one write + fdatasync each."""
    path = directory / f"bench-{how}.bin"
    size = n * len(RECORD)
    if how == "append":
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    else:
        fd = _prepare(path, how, size)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            if how == "append":
                os.write(fd, RECORD)
            else:
                os.pwrite(fd, RECORD, i * len(RECORD))
            os.fdatasync(fd)  # every record durable before the next
        return n / (time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()


def prepare_seconds(directory: Path, how: str, size: int) -> float:
    path = directory / f"prep-{how}.bin"
    t0 = time.perf_counter()
    fd = _prepare(path, how, size)
    secs = time.perf_counter() - t0
    os.close(fd)
    path.unlink()
    return secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="a directory on the disk to measure")
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--segment-mib", type=int, default=64)
    args = ap.parse_args()
    ways = ("append", "fallocate", "zero", "recycled")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        d = Path(tmp)
        rates: dict[str, list[float]] = {w: [] for w in ways}
        prep: dict[str, list[float]] = {w: [] for w in ("fallocate", "zero")}
        for r in range(args.rounds):
            for w in ways:
                rates[w].append(per_record(d, w, args.records))
            for w in prep:
                prep[w].append(prepare_seconds(d, w, args.segment_mib << 20))
            line = "  ".join(f"{w} {rates[w][-1]:,.0f}/s" for w in ways)
            print(f"round {r + 1}/{args.rounds}: {line}", flush=True)
        load = os.getloadavg()
        print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} cpus")
        base = statistics.median(rates["append"])
        print(f"{'per record (write + fdatasync)':<34}{'median/s':>10}{'vs append':>11}")
        for w in ways:
            med = statistics.median(rates[w])
            ratios = [a / b for a, b in zip(rates[w], rates["append"], strict=True)]
            print(
                f"{w:<34}{med:>10,.0f}{med / base:>10.2f}x"
                f"  (per round {min(ratios):.2f}-{max(ratios):.2f}x)"
            )
        print(f"\npreparing one {args.segment_mib} MiB segment (median of {args.rounds})")
        for w, secs in prep.items():
            print(f"{w:<34}{statistics.median(secs) * 1000:>9.1f} ms")


if __name__ == "__main__":
    main()
