#!/usr/bin/env python3
"""Include-direction check: a file in src/<dir>/ may include "<other>/..." only from a lower layer.

Usage: check_includes.py [SRC_DIR]   (default: the src/ next to this tools/ folder)

Prints each violation as
  src/cuda/x.h:12 includes "runtime/y.h" (cuda -> runtime goes against core -> io -> ... -> cli)
and exits 1; otherwise prints a one-line summary and exits 0. Run as a ctest (label unit).
"""
import re
import sys
from pathlib import Path

# Layers, low to high. A directory may include its own files and those of directories with a strictly lower
# rank; equal ranks (cpu/cuda, model/diag) may not include each other. New directory: add one entry here.
RANKS = {
    "core": 0,
    "io": 1,
    "tokenizer": 1.5,  # reads GGUF vocabularies through io/gguf.h
    "model": 2,
    "diag": 2,
    "exec": 3,
    "cpu": 4,
    "cuda": 4,
    "runtime": 5,
    "server": 6,
    "cli": 7,
}

SOURCE_SUFFIXES = {".h", ".hpp", ".cpp", ".cc", ".cu", ".cuh", ".inc"}
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')


def layer_chain():
    by_rank = {}
    for name, rank in RANKS.items():
        by_rank.setdefault(rank, []).append(name)
    return " -> ".join(", ".join(by_rank[r]) for r in sorted(by_rank))


def main(argv):
    src = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "src"
    if not src.is_dir():
        print(f"check_includes: {src} is not a directory", file=sys.stderr)
        return 2
    shown_root = src.resolve().parent
    chain = layer_chain()
    problems = []
    checked = 0
    for path in sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES):
        shown = path.resolve().relative_to(shown_root).as_posix()
        rel = path.relative_to(src)
        if len(rel.parts) < 2 or rel.parts[0] not in RANKS:
            problems.append(f"{shown}: directory {'/'.join(rel.parts[:-1]) or '(src root)'!r} has no layer; "
                            f"add it to RANKS in tools/check_includes.py")
            continue
        here = rel.parts[0]
        checked += 1
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as e:
            problems.append(f"{shown}: cannot read: {e.strerror}")
            continue
        for lineno, line in enumerate(lines, 1):
            m = INCLUDE.match(line)
            if not m:
                continue
            target = m.group(1)
            if (path.parent / target).is_file() and not (src / target).is_file():
                continue  # relative to the including file: same directory
            there = target.split("/")[0] if "/" in target else None
            if there is None or there not in RANKS:
                problems.append(f'{shown}:{lineno} includes "{target}", which is in no known layer '
                                f"(known: {', '.join(RANKS)})")
                continue
            if there != here and not RANKS[there] < RANKS[here]:
                problems.append(f'{shown}:{lineno} includes "{target}" ({here} -> {there} goes against {chain})')
    for p in problems:
        print(p)
    if problems:
        print(f"check_includes: {len(problems)} problem(s) in {src}", file=sys.stderr)
        return 1
    print(f"check_includes: {checked} files under {src} include only lower layers ({chain})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
