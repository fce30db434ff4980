#!/usr/bin/env bash
# One call on the GPU machine: build, run the gpu-labelled tests, real-shape parity against HF on the same GPU and
# the fused parity matrix (with TANDEM_GPU_MODELS: ~5 min on an H200),
# and compute-sanitizer (memcheck, initcheck, synccheck, racecheck) over the gpu tests. Logs go to $OUT (or /tmp/gpu_check),
# packed into one gpu_check_logs.tar.gz when there are more than the device machine hands back.
#   tools/gpu_check.sh [build|test|models|sanitize|all|bench]...   (bench: not part of all; BENCH_SHAPES, BENCH_ARGS,
#   BENCH_PATHS, BENCH_PEERS; test: TEST_PART)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
BUILD=build-gpu
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(all)
has() { for s in "${steps[@]}"; do [ "$s" = "$1" ] || { [ "$s" = all ] && [ "$1" != bench ]; } && return 0; done; return 1; }

# The GPU image has no libpcre2-dev; a copy unpacked from Debian's packages can travel in .deps/pcre2-root
# (carry it): dpkg -x libpcre2-dev_*.deb and libpcre2-8-0_*.deb there.
if ! pkg-config --exists libpcre2-8 2>/dev/null && [ -d .deps/pcre2-root ]; then
  export PKG_CONFIG_PATH=$PWD/.deps/pcre2-root/usr/lib/x86_64-linux-gnu/pkgconfig
  export PKG_CONFIG_SYSROOT_DIR=$PWD/.deps/pcre2-root
  export LD_LIBRARY_PATH=$PWD/.deps/pcre2-root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
# FlashInfer's headers travel as the archive tools/fetch_flashinfer.sh makes (carry: [".deps/flashinfer.tar.gz"]).
if [ ! -f .deps/flashinfer/.stamp ] && [ -f .deps/flashinfer.tar.gz ]; then tar xzf .deps/flashinfer.tar.gz -C .deps; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/card.txt"
if has build; then
  commit=(); [ -f .deps/commit.txt ] && commit=(-DTANDEM_COMMIT="$(cat .deps/commit.txt)")
  cmake -S . -B $BUILD -G Ninja -DCMAKE_BUILD_TYPE=Release "${commit[@]}" >"$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
  ninja -C $BUILD >"$OUT/build.log" 2>&1 || { grep -E "error|FAILED" "$OUT/build.log" | head -40; exit 1; }
  echo "build ok"
fi
if has models; then
  python3 tools/make_gpu_models.py --out /tmp/gpu_models > "$OUT/models.log" 2>&1 || { tail -20 "$OUT/models.log"; exit 1; }
  grep -v -E "Loading|Writing|it/s" "$OUT/models.log" | tail -5
fi
case "${TEST_PART:-both}" in both | ctest | parity) ;; *) echo "TEST_PART=$TEST_PART: expected both, ctest or parity"; exit 2 ;; esac
if has test; then
  # The gpu label but the parity suites through ctest, then those (Standard*, FusedParity*, their [ info ] lines
  # wanted) straight from gpu_tests: each runs once. On an H100 (12-06) the 87 tests before FusedParity took 390 s,
  # 220 of them DiffMatrixGpu.DecodeKernelAxisOnARealShapeModel: more than one device call holds with the parity
  # suites, so TEST_PART=ctest|parity runs one half (default both).
  [ -d /tmp/gpu_models ] && export TANDEM_GPU_MODELS=/tmp/gpu_models
  if [ "${TEST_PART:-both}" != parity ]; then
    (cd $BUILD && ctest -L gpu -E '^(Standard|FusedParity)' --output-on-failure -j1 > "$OUT/ctest_gpu.log" 2>&1)
    grep -E "tests passed|tests failed|\(Failed\)|\(SEGFAULT\)|\(Subprocess|\(Timeout" "$OUT/ctest_gpu.log" | head -40
  fi
  if [ "${TEST_PART:-both}" != ctest ]; then
    $BUILD/gpu_tests --gtest_filter='Standard*:FusedParity*' > "$OUT/standard.log" 2>&1
    grep -E "^\[ info \]" "$OUT/standard.log" | grep -v "identical except: none"
    grep -E "Failure|FAILED|PASSED|tests? ran" -A2 "$OUT/standard.log" | head -30
  fi
fi
if has sanitize; then
  # compute-sanitizer over the gpu label's binaries, every tool in parallel on the one card (SANITIZE_TOOLS,
  # RACECHECK_SHARDS, SANITIZE_TIMEOUT). racecheck is ~10x slower than the others, so it runs as gtest shards.
  # Real-shape models are left out (TANDEM_GPU_MODELS unset): under the sanitizers they take too long.
  # planted_gpu_tests runs the CLI as child processes with broken variants on purpose, so only memcheck runs there,
  # over the test process and its children: an error there must be one a planted variant explains.
  rm -f "$OUT"/sanitize_*.log "$OUT/sanitize_exits.txt"
  run_tool() {  # tool exe shards
    local tool=$1 exe=$2 n=$3 i
    for ((i = 0; i < n; i++)); do
      ( env -u TANDEM_GPU_MODELS GTEST_TOTAL_SHARDS=$n GTEST_SHARD_INDEX=$i timeout "${SANITIZE_TIMEOUT:-480}"           compute-sanitizer --tool "$tool" --error-exitcode 9 $BUILD/"$exe" > "$OUT/sanitize_${tool}_${exe}_$i.log" 2>&1
        echo "$tool $exe shard $((i + 1))/$n exit $?" >> "$OUT/sanitize_exits.txt" ) &
    done
  }
  for tool in ${SANITIZE_TOOLS:-memcheck initcheck synccheck racecheck}; do
    n=1; [ "$tool" = racecheck ] && n=${RACECHECK_SHARDS:-8}
    run_tool "$tool" gpu_tests "$n"
  done
  [ -z "${SANITIZE_TOOLS:-}" ] && run_tool memcheck planted_gpu_tests 1
  wait
  sort "$OUT/sanitize_exits.txt"
  for f in "$OUT"/sanitize_*.log; do
    printf '%s: %s; %s\n' "$(basename "$f" .log)" "$(grep -h "ERROR SUMMARY\|RACECHECK SUMMARY" "$f" | tail -1)" \
        "$(grep -hE "^\[  PASSED  \]|^\[  FAILED  \] [0-9]|tests? ran" "$f" | tr '\n' ' ')"
  done
fi
if has bench; then
  # One process per shape and path, all appended to $OUT/bench.json, each one's printed output kept in
  # $OUT/bench_<shape>_<path>.log (packed below). BENCH_PEERS=hf-sdpa (or hf-eager,hf-sdpa) adds HF transformers on
  # the same shapes to the same file (tools/bench_peers.py --merge), as the committed runs of bench/README.md need:
  #   BENCH_SHAPES="llama-3.2-1b-shape llama-3.1-8b-shape qwen2.5-7b-shape" BENCH_PEERS=hf-sdpa \
  #   BENCH_ARGS="--batch 1,64 --context 128,2048 --prefill-tokens 512,4096" tools/gpu_check.sh build bench
  bench_args=${BENCH_ARGS:---phase decode --batch 1,64 --context 128,2048}
  for shape in ${BENCH_SHAPES:-llama-3.2-1b-shape llama-3.1-8b-shape}; do
    for path in ${BENCH_PATHS:-fused standard}; do
      # shellcheck disable=SC2086
      $BUILD/tandem bench --random-weights "$shape" --path "$path" $bench_args --json "$OUT/bench.json" \
          > "$OUT/bench_${shape}_${path}.log" 2>&1 || echo "bench $shape $path failed (exit $?)"
      grep -vE "^(loading|note:)" "$OUT/bench_${shape}_${path}.log" | grep -E "tok/s|%" | head -12
    done
  done
  if [ -n "${BENCH_PEERS:-}" ]; then
    # The peers' grid from BENCH_ARGS: --batch, --context and --prefill-tokens (as --prefill) when given there; no
    # prefill for the peers unless --prefill-tokens is (tandem's own default lengths are not copied), and --phase is
    # not read: name both phases' grids in BENCH_ARGS for a like-for-like file.
    arg() { echo "$bench_args" | sed -nE "s/.*--$1[ =]([^ ]+).*/\1/p"; }
    shapes=$(echo "${BENCH_SHAPES:-llama-3.2-1b-shape llama-3.1-8b-shape}" | tr ' ' ',')
    grid=(--prefill "$(arg prefill-tokens)")  # none unless asked for
    [ -n "$(arg batch)" ] && grid+=(--batch "$(arg batch)")
    [ -n "$(arg context)" ] && grid+=(--context "$(arg context)")
    python3 tools/bench_peers.py --json "$OUT/bench.json" --merge --shapes "$shapes" --paths "$BENCH_PEERS" \
        "${grid[@]}" --reps 3 > "$OUT/bench_peers.log" 2>&1 || echo "bench_peers.py failed (exit $?)"
    tail -n 20 "$OUT/bench_peers.log"
  fi
fi
# The device machine hands back at most 8 files from $OUT (/work/.library/device/README.md): the logs (the sanitizer
# alone writes one per tool and shard) go into one archive, and the JSON results stay files of their own.
logs=$(cd "$OUT" && find . -maxdepth 1 -type f \( -name '*.log' -o -name '*.txt' \) | sort)
if [ -n "$logs" ] && [ "$(find "$OUT" -maxdepth 1 -type f | wc -l)" -gt 6 ]; then
  # shellcheck disable=SC2086
  (cd "$OUT" && tar czf gpu_check_logs.tar.gz $logs && rm -f $logs) && echo "logs packed into $OUT/gpu_check_logs.tar.gz"
fi
