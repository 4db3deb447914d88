#!/usr/bin/env bash
# Writes the seed corpus from the captured fixtures: each message alone for
# the pgoutput target, each fixture file as one framed stream for assembler.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf corpus && mkdir -p corpus/pgoutput corpus/assembler
for f in ../tests/fixtures/pgoutput/*.hex; do
    name=$(basename "$f" .hex)
    i=0
    : >"corpus/assembler/$name"
    grep -v '^#' "$f" | while read -r hex; do
        printf '%s' "$hex" | xxd -r -p >"corpus/pgoutput/$name-$i"
        printf '%04x' $((${#hex} / 2)) | xxd -r -p >>"corpus/assembler/$name"
        printf '%s' "$hex" | xxd -r -p >>"corpus/assembler/$name"
        i=$((i + 1))
    done
done
