#!/usr/bin/env bash
# The registry's pre-load check on real files (reliability defects D2, D4,
# D15): a stripped plugin loads (found first, its id then makes the in-tree
# copy a duplicate), a library whose .dynsym names point outside
# .dynstr is refused with one line while every command still runs, and an
# entry symbol that is data, not a function, is refused before it is called.
# usage: registry_elf_test.sh <qforge binary> <in-tree plugin dir> <C compiler>
set -uo pipefail
qforge="$1" plugins="$2" cc="$3"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail=0
check() { if eval "$2"; then echo "ok:   $1"; else echo "FAIL: $1"; cat "$work/err"; fail=1; fi; }

mkdir "$work/stripped" && strip --strip-unneeded -o "$work/stripped/qforge-rtn-copy.so" "$plugins/qforge-rtn.so"
"$qforge" --plugin-dir "$work/stripped" plugins > /dev/null 2> "$work/err"
check "a stripped plugin loads (its id then collides with the in-tree copy's)" \
  'grep -q "duplicate id .org.qforge.rtn.: .*qforge-rtn-copy.so, earlier in the search order, provides it" "$work/err" && ! grep -q "no exported symbol" "$work/err"'

mkdir "$work/bad" && cp "$plugins/qforge-rtn.so" "$work/bad/qforge-bad.so"
python3 - "$work/bad/qforge-bad.so" <<'PY'
import struct, sys
p = sys.argv[1]; b = bytearray(open(p, 'rb').read())
shoff, = struct.unpack_from('<Q', b, 0x28); es, n = struct.unpack_from('<HH', b, 0x3A)
for i in range(n):
    h = shoff + i * es
    if struct.unpack_from('<I', b, h + 4)[0] == 11:          # SHT_DYNSYM
        off, size = struct.unpack_from('<QQ', b, h + 0x18)
        for k in range(off + 24, off + size, 24):            # every Elf64_Sym but the null one
            struct.pack_into('<I', b, k, 0xFFFFFF00)          # st_name far outside .dynstr
open(p, 'wb').write(b)
PY
"$qforge" --plugin-dir "$work/bad" plugins > "$work/out" 2> "$work/err"
rc=$?
check "a corrupt .dynsym is refused with one line, the command runs (exit 0)" \
  '[ "$rc" -eq 0 ] && [ "$(grep -c "qforge-bad.so" "$work/err")" -eq 1 ] && grep -q "not a readable shared library" "$work/err" && grep -q org.qforge.rtn "$work/out"'

mkdir "$work/data" && echo 'const char qforge_plugin_entry_v1[64] = "not code";' > "$work/data.c"
"$cc" -shared -fPIC "$work/data.c" -o "$work/data/qforge-data.so"
"$qforge" --plugin-dir "$work/data" plugins > /dev/null 2> "$work/err"
rc=$?
check "an entry symbol that is data is refused before it is called" \
  '[ "$rc" -eq 0 ] && grep -q "qforge-data.so.*is not a function" "$work/err"'
exit $fail
