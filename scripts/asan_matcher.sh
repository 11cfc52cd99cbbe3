#!/usr/bin/env bash
# Build matching_native._book with AddressSanitizer + UBSan into a temporary
# directory and run the matcher test suite against that build.
#
# The in-place (normal) build is never touched: the package and its tests are
# copied next to the sanitized extension in a temp dir that comes first on
# sys.path (the script checks that the sanitized module is the one imported).
# The Python interpreter is not instrumented, so libasan is LD_PRELOADed and
# PYTHONMALLOC=malloc routes every Python allocation through ASan.
#
# Leaks: detect_leaks=1. CPython deliberately does not free everything at exit,
# so LeakSanitizer always reports interpreter-owned blocks; the script therefore
# fails on any leak whose allocation stack contains a frame of the extension
# (_book.c) and ignores leaks that are purely the interpreter's.
# Any ASan error or UBSan "runtime error" fails the run.
#
# Usage: scripts/asan_matcher.sh [extra pytest args]     exit status 0 = clean
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/asan_matcher.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

LIBASAN="$(${CC:-gcc} -print-file-name=libasan.so)"
if [[ ! -e "$LIBASAN" ]]; then
    echo "asan_matcher: libasan.so not found (install gcc with ASan support)" >&2
    exit 2
fi

echo "== building the sanitized extension in $TMP"
(cd "$ROOT" && MATCHING_NATIVE_SANITIZE=address "$PY" setup.py -q build_ext \
    --build-lib "$TMP/lib" --build-temp "$TMP/build" --force)

mkdir -p "$TMP/run/tests" "$TMP/logs"
cp -r "$TMP/lib/matching_native" "$TMP/run/matching_native"
cp "$ROOT"/matching_native/*.py "$ROOT"/matching_native/README.md "$TMP/run/matching_native/"
cp -r "$ROOT/tests/matching_native" "$TMP/run/tests/matching_native"
touch "$TMP/run/tests/__init__.py"
find "$TMP/run" -name __pycache__ -prune -exec rm -rf {} +
cat > "$TMP/run/pytest.ini" <<'INI'
[pytest]
addopts = -ra --strict-markers -p no:django -p no:cacheprovider
filterwarnings = error
markers =
    slow: long-running tests
INI

export LD_PRELOAD="$LIBASAN"
export PYTHONMALLOC=malloc
export PYTHONDONTWRITEBYTECODE=1
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:log_path=$TMP/logs/asan:strict_string_checks=1:detect_stack_use_after_return=1"
export LSAN_OPTIONS="exitcode=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$TMP/logs/ubsan"

cd "$TMP/run"
"$PY" -c 'import matching_native._book as b, sys; assert b.__file__.startswith(sys.argv[1]), b.__file__; print("== sanitized module:", b.__file__)' "$TMP/run"

echo "== running tests/matching_native under ASan/UBSan"
set +e
"$PY" -m pytest tests/matching_native -q "$@"
status=$?
set -e

bad=0
shopt -s nullglob
for f in "$TMP"/logs/*; do
    if grep -q -E "ERROR: AddressSanitizer|runtime error:" "$f"; then
        echo "== sanitizer error report ($f):"
        cat "$f"
        bad=1
    fi
    if grep -q "ERROR: LeakSanitizer" "$f"; then
        # split into individual leak reports; keep those with a frame in the extension
        ours="$(awk 'BEGIN{RS="";ORS="\n\n"} /(Direct|Indirect) leak/ && /_book/' "$f")"
        if [[ -n "$ours" ]]; then
            echo "== leaks involving matching_native._book ($f):"
            echo "$ours"
            bad=1
        else
            echo "== $(basename "$f"): LeakSanitizer found only interpreter-owned blocks (ignored)"
        fi
    fi
done

if [[ $status -ne 0 ]]; then
    echo "asan_matcher: tests failed (exit $status)" >&2
    exit $status
fi
if [[ $bad -ne 0 ]]; then
    echo "asan_matcher: sanitizer reports found" >&2
    exit 1
fi
echo "asan_matcher: clean (no ASan/UBSan errors, no leaks from the extension)"
