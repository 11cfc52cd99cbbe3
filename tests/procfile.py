"""How tests start the exchange's processes: as the Procfile does, with its environment.

`die_with_parent` makes a child die with the test; `web_command` is the Procfile's launcher (scripts/web.py, uvicorn), one worker unless asked;
`procfile_env(name)` the variables the Procfile's line for `name` sets before its command
(`web`: the connection pool and prepared statements; `matcher`: its prepared statements).
"""
import ctypes
import re
import signal
import sys
from pathlib import Path

from bench.common import procfile_line

ROOT = Path(__file__).resolve().parents[1]
_ASSIGNMENT = re.compile(r"([A-Z][A-Z0-9_]*)=(\S*)$")


def die_with_parent() -> None:
    """Child side of Popen (preexec_fn): SIGTERM when the test process dies, however it dies (Linux)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def web_command(port: int, *, workers: int = 1) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "web.py"), "--workers", str(workers), "-b", "127.0.0.1",
            "-p", str(port)]


def procfile_env(name: str) -> dict[str, str]:
    env = {}
    for word in procfile_line(name).split():
        match = _ASSIGNMENT.match(word)
        if not match:
            break
        env[match[1]] = match[2]
    return env
