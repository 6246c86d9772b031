#!/usr/bin/env bash
# Installs the SDK from the build tree into a temporary prefix, builds the
# example plugin as a separate project with find_package(qforge), and checks
# that the qforge CLI loads it and runs it.
# usage: run.sh <qforge build dir> <qforge binary> <example source dir>
set -euo pipefail
build="$1" qforge="$2" example="$3"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --component sdk --prefix "$work/prefix" > /dev/null
cmake -S "$example" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" \
      -DCMAKE_BUILD_TYPE=Release > "$work/configure.log" || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/build" > "$work/build.log" || { cat "$work/build.log"; exit 1; }
test -f "$work/build/example-int8.so"
# No in-tree headers were needed: the installed package alone built it.
grep -q "$work/prefix/include" "$work/build/CMakeFiles/example-int8.dir/flags.make"
"$qforge" --plugin-dir "$work/build" plugins show org.example.int8 | tee "$work/show.txt"
grep -q "clip" "$work/show.txt"
"$qforge" --plugin-dir "$work/build" quantize-layer --method org.example.int8 --rows 64 --cols 96 \
  --set clip=0.9 | tee "$work/run.txt"
grep -q "org.example.int8/1" "$work/run.txt"
echo "out-of-tree plugin OK"
