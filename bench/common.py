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


def ensure_services() -> None:
    """Use DATABASE_URL/REDIS_URL when set, else start the project-local servers (as `make run` does)."""
    import subprocess
    from pathlib import Path

    if os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"):
        return
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([str(root / "scripts" / "services.sh"), "start"], check=True, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            os.environ[key] = value


def clock_steps(module, names) -> dict[str, float]:
    """Wrap the named functions of `module` (looked up per call) to add their seconds to the returned dict.

    The caller clears the dict before each measured run and reads where the time went after it.
    """
    import time

    spent: dict[str, float] = {}

    def clocked(name, fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - started
        return wrapper

    for name in names:
        if hasattr(module, name):
            setattr(module, name, clocked(name, getattr(module, name)))
    return spent
