"""Shared helpers for the benchmarks in `bench/`: machine load and peak memory.

Every benchmark prints the machine's load next to its figures so numbers taken on a
busy machine can be told apart from numbers taken on a quiet one.
"""
import os
import platform
import resource


def machine_line() -> str:
    load1, load5, load15 = os.getloadavg()
    return (
        f"machine: {platform.machine()} cpus={os.cpu_count()} "
        f"load={load1:.2f}/{load5:.2f}/{load15:.2f} python={platform.python_version()}"
    )


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
