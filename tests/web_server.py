"""How tests start the web process: the Procfile's launcher (scripts/web.py, uvicorn), one worker unless asked."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def web_command(port: int, *, workers: int = 1) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "web.py"), "--workers", str(workers), "-b", "127.0.0.1",
            "-p", str(port)]
