"""Tools around the library: disk and log measurements, the demo and its outage proxy.

Layer rule: the top layer. It may import anything in ``wal``; nothing in ``wal`` imports it
(only ``cli/`` and ``benchmarks/`` do).

* ``bench``, ``bench_results``: measurements for ``atb wal bench`` and ``benchmarks/``.
* ``demo``, ``netproxy``: ``atb demo`` and the TCP proxy it cuts for a PostgreSQL outage.
"""
