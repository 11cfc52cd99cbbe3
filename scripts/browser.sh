#!/usr/bin/env bash
# Headless Chromium + ChromeDriver for the browser tests (tests/ops/test_dashboard_browser.py).
# Installed from Debian's packages when missing and this user can (root with apt-get);
# otherwise it says so and the browser tests are skipped with that reason.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing chromium and chromium-driver for the browser tests..." >&2
  (apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1)) \
    || echo "could not install chromium; browser tests will be skipped" >&2
else
  echo "chromium/chromedriver not found (install Debian's chromium and chromium-driver); browser tests will be skipped" >&2
fi
