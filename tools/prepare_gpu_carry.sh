#!/usr/bin/env bash
# Prepares what a GPU-machine call must carry (the GPU image lacks these and reaches no network):
#   .deps/pcre2-root   libpcre2-dev + libpcre2-8-0 unpacked from Debian's packages (carry: [".deps/pcre2-root"])
#   .deps/split/part_* the default model in 33 MB parts (the carry limit is 64 MiB a call); carry one part per
#                      call into /tmp within the machine's 30 s warm window, then cat them into models/.
#   .deps/commit.txt   the commit (with "+dirty" when the tree has changes) for `tandem bench`'s JSON: the GPU copy has
#                      no .git (carry: [".deps/commit.txt"]); rerun this after every commit
# tools/gpu_check.sh uses .deps/pcre2-root automatically.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/fetch_default_model.sh
if [ ! -d .deps/pcre2-root ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download libpcre2-dev libpcre2-8-0 >/dev/null)
  mkdir -p .deps/pcre2-root
  for f in "$tmp"/*.deb; do dpkg -x "$f" .deps/pcre2-root; done
  rm -rf "$tmp"
fi
if [ ! -f .deps/split/part_ac ]; then
  mkdir -p .deps/split
  (cd .deps/split && split -b 33m ../../models/SmolLM2-135M-Instruct.Q4_1.gguf part_)
fi
mkdir -p .deps
{ git rev-parse --short HEAD | tr -d '\n'; git diff --quiet HEAD -- src tests CMakeLists.txt cmake || echo -n "+dirty"; echo; } \
  > .deps/commit.txt
cat .deps/commit.txt
ls -la .deps/split .deps/pcre2-root | head -20
