"""Throughput, latency and memory benchmarks of the bridge against its own ceiling (issue #7).

``python -m bench.run`` (or ``make bench``) starts one embedded broker and two emulators
and runs every scenario against them as separate processes; see :mod:`bench.run`.
"""
