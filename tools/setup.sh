#!/usr/bin/env bash
# One-time machine setup, safe to re-run: installs the pinned Debian packages tandem builds against.
# (The CUDA toolkit is expected at /usr/local/cuda; nothing is downloaded at run time.)
set -euo pipefail

APT_PACKAGES=(cmake ninja-build g++ ccache pkg-config bible-kjv
  nlohmann-json3-dev libcli11-dev libfmt-dev libspdlog-dev libpcre2-dev libcpp-httplib-dev
  libssl-dev zlib1g-dev libbrotli-dev  # cpp-httplib's pkg-config needs these
  libgtest-dev libgmock-dev libbenchmark-dev
  chromium-headless-shell  # renders the HTML reports in a test (tests/planted/render_reports.py)
  clang-14 libclang-rt-14-dev)  # libFuzzer + ASan/UBSan runtimes for the fuzz targets (tests/fuzz, `make fuzz`)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v nvcc >/dev/null 2>&1; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then
    echo "setup: nvcc is at /usr/local/cuda/bin (the Makefile adds it to PATH)"
  else
    echo "setup: nvcc not found; install the CUDA toolkit (13.x) at /usr/local/cuda" >&2
    exit 1
  fi
fi
tools/fetch_default_model.sh
tools/fetch_flashinfer.sh

# The official openai client, pinned, for the server tests (tests/server/openai_client_test.py): in .deps/venv.
OPENAI_VERSION=1.109.1
if ! .deps/venv/bin/python -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
  echo "setup: openai==$OPENAI_VERSION into .deps/venv"
  python3 -m venv .deps/venv
  .deps/venv/bin/python -m pip install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION"
fi

# Public-domain evaluation text for `tandem perplexity` tests: Genesis 1-3 (KJV) from Debian's bible-kjv.
if [ ! -s .deps/kjv-genesis.txt ]; then
  if ! command -v bible >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends bible-kjv >/dev/null
  fi
  mkdir -p .deps && bible -f "Gen1:1-3:24" > .deps/kjv-genesis.txt
fi
