"""Tools around the library: disk and log measurements, the demo and its outage proxy.

Layer rule: the top layer. It may import anything in ``wal``; nothing in ``wal`` imports it
(only ``cli/`` and ``benchmarks/`` do).

* ``bench_workload``: the benchmarks' sizes, realistic trades, threads released together.
* ``bench_results``: what was measured (``Measurement``), a run's result, the targets.
* ``bench_disk``: the disk's limit (write + fdatasync) and SQLite on the same disk.
* ``bench_log``: the log's measurements: appends, asyncio, recovery, a drain, memory.
* ``bench``: the runner for ``atb wal bench`` and the one import for ``benchmarks/``.
* ``demo``, ``netproxy``: ``atb demo`` and the TCP proxy it cuts for a PostgreSQL outage.
"""
