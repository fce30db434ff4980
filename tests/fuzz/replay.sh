#!/bin/sh
# Runs a fuzz target once over each committed regression input in DIR (no fuzzing). Usage: replay.sh FUZZER DIR [FLAGS]
set -eu
fuzzer=$1 dir=$2
shift 2
set -- "$@" $(find "$dir" -type f ! -name '.*' ! -name '*.md' | sort)
case "$*" in *"$dir"*) ;; *) echo "no regression inputs in $dir"; exit 0 ;; esac
exec "$fuzzer" "$@"
