#!/usr/bin/env bash
# On the GPU machine: builds `tandem` at an older commit (from .deps/old_tree.tar.gz, made by
#   git archive OLD src CMakeLists.txt tests/unit tests/golden tests/gpu | gzip > .deps/old_tree.tar.gz)
# and runs `tandem bench` decode for both binaries, alternating, in one call, into $OUT/bench_{before,after}.json.
#   tools/bench_before_after.sh NEW_BUILD_DIR [shapes...]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/bench}
NEW=$1; shift
shapes=("$@"); [ ${#shapes[@]} -eq 0 ] && shapes=(llama-3.2-1b-shape llama-3.1-8b-shape)
rm -rf /tmp/old_tree && mkdir -p /tmp/old_tree && tar xzf .deps/old_tree.tar.gz -C /tmp/old_tree
cmake -S /tmp/old_tree -B /tmp/old_tree/build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C /tmp/old_tree/build tandem >/dev/null
for shape in "${shapes[@]}"; do
  for side in before after; do
    bin=$NEW/tandem; [ $side = before ] && bin=/tmp/old_tree/build/tandem
    "$bin" bench --random-weights "$shape" --phase decode --batch 1,64 --context 128 --json "$OUT/bench_$side.json" \
      | grep -E "^card|^model|^[0-9]" || true
  done
done
