#!/usr/bin/env bash
# End-to-end checks of the qforge CLI: listing, show, --set validation, exit
# codes, and a broken library on QFORGE_PLUGIN_PATH.
# usage: cli_test.sh <qforge binary> <dir holding a library without the entry symbol>
set -uo pipefail
qforge="$1" broken_dir="$2"
fail=0
out="$(mktemp)" err="$(mktemp)"
trap 'rm -f "$out" "$err"' EXIT

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
contains() {  # contains <file> <fixed string> <description>
  if ! grep -qF -- "$2" "$1"; then echo "FAIL: $3: no '$2' in:"; cat "$1"; fail=1; fi
}

expect 0 "--version" -- "$qforge" --version
contains "$out" "plugin ABI 1." "--version names the ABI"

expect 0 "plugins lists RTN" -- "$qforge" plugins
contains "$out" "org.qforge.rtn" "plugins table"
contains "$out" "bits=4" "plugins table shows parameters"
contains "$out" "org.qforge.affine.layer" "plugins table shows the inference layer"

expect 0 "plugins --json" -- "$qforge" plugins --json
contains "$out" '"id": "org.qforge.rtn"' "plugins --json"

expect 0 "plugins show" -- "$qforge" plugins show org.qforge.rtn
contains "$out" "bits" "show lists bits"
contains "$out" "an integer in [2, 8]" "show gives the range"
contains "$out" "group_size" "show lists group_size"
contains "$out" "sym" "show lists sym"

expect 2 "show of an unknown id" -- "$qforge" plugins show org.nope
contains "$err" "no component with id 'org.nope'" "unknown id message"

expect 2 "--set bits=9 is refused" -- "$qforge" quantize-layer --method org.qforge.rtn --set bits=9 --rows 8 --cols 8
contains "$err" "'bits'" "refusal names the parameter"
contains "$err" "[2, 8]" "refusal names the range"

expect 2 "--set of an unknown parameter" -- "$qforge" quantize-layer --method org.qforge.rtn --set bitz=4 --rows 8 --cols 8
contains "$err" "no parameter 'bitz'" "unknown parameter message"

expect 2 "group_size=0 is refused by the plugin" -- "$qforge" quantize-layer --method org.qforge.rtn --set group_size=0 --rows 8 --cols 8
contains "$err" "group_size" "plugin refusal names group_size"

expect 0 "quantize-layer runs RTN" -- "$qforge" quantize-layer --method org.qforge.rtn --set bits=3 --set group_size=32 --rows 64 --cols 96
contains "$out" "org.qforge.rtn/1" "format printed"
contains "$out" "forward matches" "packed layer checked"

expect 0 "quantize-layer runs GPTQ with a synthetic Hessian" -- "$qforge" quantize-layer --method org.qforge.gptq --set bits=4 --set group_size=32 --set desc_act=true --rows 48 --cols 96
contains "$out" "org.qforge.gptq/1" "GPTQ format printed"
contains "$out" "hessian:          synthetic" "the synthetic Hessian is said"
contains "$out" "forward matches" "GPTQ packed layer checked"

expect 2 "unknown command" -- "$qforge" frobnicate
expect 2 "missing command" -- "$qforge"
expect 2 "bad option" -- "$qforge" plugins --frob
for cmd in plugins quantize-layer; do
  expect 0 "$cmd --help" -- "$qforge" "$cmd" --help
  contains "$out" "Usage: qforge $cmd" "$cmd --help"
done

# A broken library on QFORGE_PLUGIN_PATH: one line about it, the rest loads.
QFORGE_PLUGIN_PATH="$broken_dir" expect 0 "plugins with a broken library on the path" -- "$qforge" plugins
contains "$out" "org.qforge.rtn" "RTN still loads next to a broken library"
lines=$(grep -c "refused" "$err")
if [ "$lines" -ne 1 ]; then echo "FAIL: expected one 'refused' line, got $lines:"; cat "$err"; fail=1; fi
contains "$err" "qforge_plugin_entry_v1" "the refusal says why"

exit $fail
