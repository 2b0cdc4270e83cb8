#!/usr/bin/env bash
# Install into ./.venv (system packages fio and systemd when apt is available) and run the tests.
# The full report stays in out/test-report/ (ignored by git; DUALBLADE_TEST_REPORT overrides):
# pytest.log (the console: failures, skips with reasons, the 25 slowest tests) and junit.xml.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  need=()
  command -v fio >/dev/null || need+=(fio)
  command -v systemd-analyze >/dev/null || need+=(systemd)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements-dev.txt
.venv/bin/pip install -q --no-deps -r requirements-vllm.txt  # see the file: no CUDA torch
.venv/bin/ruff check .
report="${DUALBLADE_TEST_REPORT:-out/test-report}"
mkdir -p "$report"
.venv/bin/python -m pytest -q -ra --durations=25 --junitxml="$report/junit.xml" "$@" 2>&1 \
  | tee "$report/pytest.log"
