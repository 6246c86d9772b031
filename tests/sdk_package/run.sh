#!/usr/bin/env bash
# Installs the SDK from the build tree into a temporary prefix, writes the
# example plugin project with `qforge new-plugin`, builds it as a separate
# project with find_package(qforge), and checks that the qforge CLI loads it
# and runs it.
# usage: run.sh <qforge build dir> <qforge binary>
set -euo pipefail
build="$1" qforge="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --component sdk --prefix "$work/prefix" > /dev/null
example="$work/my-plugin"
"$qforge" new-plugin "$example" | tee "$work/new.txt"
grep -q "quantize-layer --method org.example.ternary" "$work/new.txt"
if "$qforge" new-plugin "$example" > /dev/null 2>&1; then echo "new-plugin overwrote a project"; exit 1; fi
cmake -S "$example" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" \
      -DCMAKE_BUILD_TYPE=Release > "$work/configure.log" || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/build" > "$work/build.log" || { cat "$work/build.log"; exit 1; }
test -f "$work/build/example-ternary.so"
# No in-tree headers were needed: the installed package alone built it.
grep -q "$work/prefix/include" "$work/build/CMakeFiles/example-ternary.dir/flags.make"
# The entry point is its only exported symbol.
[ "$(nm -D --defined-only "$work/build/example-ternary.so" | awk '{print $3}')" = qforge_plugin_entry_v1 ]
"$qforge" --plugin-dir "$work/build" plugins show org.example.ternary | tee "$work/show.txt"
grep -q "needs-hessian" "$work/show.txt"
grep -q "delta .*default 0.7 " "$work/show.txt"
# quantize-layer checks the plugin's own inference layer against its dequantized weight.
"$qforge" --plugin-dir "$work/build" quantize-layer --method org.example.ternary --rows 64 --cols 96 \
  --set group_size=16 | tee "$work/run.txt"
grep -q "org.example.ternary/1" "$work/run.txt"
grep -q "inference layer: *org.example.ternary.layer" "$work/run.txt"
echo "out-of-tree plugin OK"
