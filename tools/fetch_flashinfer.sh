#!/usr/bin/env bash
# Fetches FlashInfer's headers (no Python, no JIT at run time): the pinned flashinfer-python wheel from PyPI,
# verified by sha256, cached in .deps/wheels/, of which only the headers are unpacked into .deps/flashinfer/:
#   .deps/flashinfer/include           FlashInfer's own headers          (wheel: flashinfer/data/include)
#   .deps/flashinfer/cccl              CCCL 3.6 (cub, libcudacxx, thrust) (wheel: flashinfer/data/cccl); it must
#                                      come before the CUDA toolkit's older CCCL on the include path
#   .deps/flashinfer/cutlass/include   CUTLASS, for the Hopper (FA3) kernels (wheel: flashinfer/data/cutlass/include)
# cmake/flashinfer.cmake reads them from there (TANDEM_FLASHINFER_DIR). Also writes .deps/flashinfer.tar.gz, the
# same tree as one small archive for a GPU machine that reaches no network (carry it, then
# `tar xzf .deps/flashinfer.tar.gz -C .deps` there). Re-running is a no-op once the stamp matches.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.7.2.post1
SHA256=bfdc18b9e1e4d8d0730fe4343dc0e284cd0c160086de80f99888bc4867922d49
WHEEL=.deps/wheels/flashinfer_python-$VERSION-py3-none-any.whl
DEST=.deps/flashinfer
ARCHIVE=.deps/flashinfer.tar.gz
STAMP=$DEST/.stamp
STAMP_TEXT="flashinfer-python==$VERSION sha256=$SHA256"
KEY_FILES=(
  include/flashinfer/attention/prefill.cuh
  include/flashinfer/attention/decode.cuh
  include/flashinfer/attention/scheduler.cuh
  include/flashinfer/page.cuh
  include/flashinfer/fastdiv.cuh
  cccl/cub/cub/cub.cuh
  cccl/libcudacxx/include/cuda/cmath
  cccl/thrust/thrust/version.h
  cutlass/include/cutlass/cutlass.h
)

have_all() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_TEXT" ] && [ -s "$ARCHIVE" ] || return 1
  for f in "${KEY_FILES[@]}"; do [ -f "$DEST/$f" ] || return 1; done
}
have_all && exit 0

mkdir -p .deps/wheels
if [ ! -f "$WHEEL" ] || ! echo "$SHA256  $WHEEL" | sha256sum -c --quiet - 2>/dev/null; then
  echo "setup: downloading flashinfer-python==$VERSION (headers for the fused path, ~62 MB) from PyPI"
  rm -f "$WHEEL"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d .deps/wheels "flashinfer-python==$VERSION"
fi
echo "$SHA256  $WHEEL" | sha256sum -c --quiet - || { echo "setup: $WHEEL failed its sha256 check" >&2; exit 1; }

# Unpack into a fresh folder beside the destination, then swap it in: an interrupted run leaves no half tree.
TMP=$(mktemp -d .deps/flashinfer.tmp.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
python3 - "$WHEEL" "$TMP/flashinfer" <<'PY'
import os, shutil, sys, zipfile
wheel, dest = sys.argv[1:]
prefixes = ("flashinfer/data/include/", "flashinfer/data/cccl/", "flashinfer/data/cutlass/include/")
strip = len("flashinfer/data/")
n = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        name = info.filename
        if info.is_dir() or not name.startswith(prefixes):
            continue
        rel = os.path.normpath(name[strip:])
        if rel.startswith("..") or os.path.isabs(rel):
            sys.exit(f"setup: unsafe path in wheel: {name}")
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(info) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
        n += 1
print(f"setup: unpacked {n} FlashInfer header files")
PY
for f in "${KEY_FILES[@]}"; do
  [ -f "$TMP/flashinfer/$f" ] || { echo "setup: $f missing from $WHEEL" >&2; exit 1; }
done
# CCCL 3.x (the toolkit of CUDA 13.0 has 3.0, which lacks cuda::fast_mod_div that fastdiv.cuh needs).
grep -q '#define CCCL_VERSION 30' "$TMP/flashinfer/cccl/libcudacxx/include/cuda/std/__cccl/version.h" ||
  { echo "setup: the wheel's CCCL is not version 3.x" >&2; exit 1; }
echo "$STAMP_TEXT" > "$TMP/flashinfer/.stamp"
tar -C "$TMP" -czf "$TMP/flashinfer.tar.gz" flashinfer
rm -rf "$DEST" "$ARCHIVE"
mv "$TMP/flashinfer" "$DEST"
mv "$TMP/flashinfer.tar.gz" "$ARCHIVE"
echo "setup: FlashInfer $VERSION headers at $DEST ($(du -sh "$DEST" | cut -f1)); archive $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1))"
