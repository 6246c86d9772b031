#!/usr/bin/env bash
# `qforge tokenize` end to end: ids of the stories260K prompt, --json, the
# Llama 3 tokenizer file, and exit code 2 for bad usage.
# usage: tokenize_cli_test.sh <qforge binary> <shared data dir>
# $QFORGE_SHARED overrides the data dir; missing data: exit 77 (skip), or 1 when CI=true.
set -uo pipefail
qforge="$1" shared="${QFORGE_SHARED:-$2}"
if [ ! -d "$shared/models/stories260K" ] || [ ! -f "$shared/tokenizers/llama3/tokenizer.json" ]; then
  echo "shared test data missing under $shared (set QFORGE_SHARED)"
  [ "${CI:-}" = "true" ] && exit 1
  exit 77
fi
fail=0
out="$(mktemp)" err="$(mktemp)" txt="$(mktemp)"
trap 'rm -f "$out" "$err" "$txt"' EXIT

expect() {  # expect <exit code> <description> -- command...
  local want="$1" what="$2"; shift 3
  "$@" > "$out" 2> "$err"
  local got=$?
  if [ "$got" -ne "$want" ]; then
    echo "FAIL: $what: exit $got, expected $want"; cat "$out" "$err"; fail=1
  else
    echo "ok:   $what"
  fi
}
equals() {  # equals <file> <exact content> <description>
  if [ "$(cat "$1")" != "$2" ]; then echo "FAIL: $3: expected '$2', got:"; cat "$1"; fail=1; fi
}
contains() {  # contains <file> <fixed string> <description>
  if ! grep -qF -- "$2" "$1"; then echo "FAIL: $3: no '$2' in:"; cat "$1"; fail=1; fi
}

expect 0 "stories260K prompt with BOS" -- \
  "$qforge" tokenize --model "$shared/models/stories260K" --text "Once upon a time" --add-special
equals "$out" "[1,403,407,261,378]" "stories260K ids"

expect 0 "without --add-special" -- \
  "$qforge" tokenize --model "$shared/models/stories260K" --text "Once upon a time"
equals "$out" "[403,407,261,378]" "ids without BOS"

printf 'Once upon a time' > "$txt"
expect 0 "--file and --json" -- \
  "$qforge" tokenize --tokenizer "$shared/models/stories260K/tokenizer.model" --file "$txt" --add-special --json
contains "$out" '"ids":[1,403,407,261,378]' "--json ids"
contains "$out" '"count":5' "--json count"
contains "$out" '"pieces":["<s>",' "--json pieces"

expect 0 "--file - reads standard input" -- \
  bash -c "printf 'Once upon a time' | '$qforge' tokenize --model '$shared/models/stories260K' --file -"
equals "$out" "[403,407,261,378]" "stdin ids"

expect 0 "Llama 3 tokenizer.json" -- \
  "$qforge" tokenize --tokenizer "$shared/tokenizers/llama3/tokenizer.json" --text "Hello, world!" --add-special
equals "$out" "[128000,9906,11,1917,0]" "Llama 3 ids"

expect 0 "--help" -- "$qforge" tokenize --help
contains "$out" "--add-special" "help lists --add-special"

expect 2 "no tokenizer given" -- "$qforge" tokenize --text hi
contains "$err" "--model" "missing tokenizer message"
expect 2 "no text given" -- "$qforge" tokenize --model "$shared/models/stories260K"
expect 2 "both --text and --file" -- \
  "$qforge" tokenize --model "$shared/models/stories260K" --text a --file "$txt"
expect 2 "missing tokenizer file" -- "$qforge" tokenize --tokenizer /nonexistent/tok.json --text hi
contains "$err" "/nonexistent/tok.json" "missing file is named"
expect 2 "garbage SentencePiece model" -- "$qforge" tokenize --tokenizer "$txt" --text hi
contains "$err" "$txt" "garbage file is named"
expect 2 "missing text file" -- \
  "$qforge" tokenize --model "$shared/models/stories260K" --file /nonexistent/text.txt
expect 2 "unknown option" -- "$qforge" tokenize --model "$shared/models/stories260K" --text a --bogus

exit $fail
