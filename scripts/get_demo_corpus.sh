#!/usr/bin/env bash
# Write the demo corpus, the King James Bible (public domain), to the file given as argument.
#
#   scripts/get_demo_corpus.sh OUT.txt
#
# The text comes from Debian's bible-kjv package (installed with apt-get when missing and
# run as root). Cleaning: the verse references ("Ge1:1 ") are stripped, the verses of a
# chapter are joined by single spaces into one line, and chapters are separated by a blank
# line, so each of the 1189 chapters is one paragraph: one document (one BOS) for
# minillama.train.data.encode_corpus. docs/demo_corpus.md describes the result.
set -euo pipefail
export LC_ALL=C

out=${1:?usage: scripts/get_demo_corpus.sh OUT.txt}
if ! command -v bible >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "get_demo_corpus.sh: the 'bible' command is missing: install Debian's bible-kjv (apt-get install bible-kjv)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bible-kjv >/dev/null
fi

raw=$(mktemp)
trap 'rm -f "$raw" "$out.partial"' EXIT
bible -f "Gen1:1-Rev22:21" >"$raw"

# Every line must be "BookChapter:Verse text"; anything else means the package changed.
if grep -vqE '^[0-9]?[A-Za-z]+[0-9]+:[0-9]+ ' "$raw"; then
    echo "get_demo_corpus.sh: unexpected line in bible's output: $(grep -vm1 -E '^[0-9]?[A-Za-z]+[0-9]+:[0-9]+ ' "$raw")" >&2
    exit 1
fi

awk '{
    reference = $1
    text = substr($0, length(reference) + 2)
    sub(/[ \t]+$/, "", text)
    chapter = substr(reference, 1, index(reference, ":") - 1)   # "Ge1:1" -> "Ge1"
    if (NR == 1) { } else if (chapter != last) { printf "\n\n" } else { printf " " }
    printf "%s", text
    last = chapter
    chapters += (NR == 1 || chapter != previous); previous = chapter
} END {
    printf "\n"
    if (NR != 31102 || chapters != 1189) {
        printf "get_demo_corpus.sh: expected 31102 verses in 1189 chapters, got %d in %d\n", NR, chapters > "/dev/stderr"
        exit 1
    }
}' "$raw" >"$out.partial"

mv "$out.partial" "$out"
echo "wrote $out: $(wc -c <"$out") bytes, $(wc -w <"$out") words, 1189 chapters" >&2
