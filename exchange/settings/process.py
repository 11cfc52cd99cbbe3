"""Which process of the exchange this is, by its command line: PostgreSQL's `application_name`.

pg_stat_activity then tells an operator which process holds each connection or runs a
slow statement ("exchange web", "exchange run_matcher", "exchange celery worker", ...),
and benches split PostgreSQL's CPU by the process it works for. DB_APPLICATION_NAME
overrides it.
"""
import os
import sys

# PostgreSQL keeps the first 63 bytes of an application_name.
MAX_LENGTH = 63


def process_name(argv: list[str] | None = None) -> str:
    argv = sys.argv if argv is None else argv
    names = [os.path.basename(arg) for arg in argv]
    # `python -m package` runs package/__main__.py: the package names the program.
    program = os.path.basename(os.path.dirname(argv[0])) if names[:1] == ["__main__.py"] else (names or [""])[0]
    if "manage.py" in names:
        command = argv[names.index("manage.py") + 1:][:1] or ["manage.py"]
        name = "exchange " + command[0]
    elif program == "uvicorn":  # scripts/web.py's workers
        name = "exchange web"
    elif program == "celery":
        role = next((arg for arg in argv[1:] if arg in ("worker", "beat")), "")
        name = f"exchange celery {role}".rstrip()
    else:
        name = "exchange " + (program or "python")
    return name[:MAX_LENGTH]
