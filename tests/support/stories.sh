# Sourced by the shell tests that run qforge on stories260K, after setting
# $shared. Sets M (the model), C (its calibration text), work (a temporary
# directory removed at exit), fail=0, and check DESCRIPTION CONDITION
# (CONDITION is eval'd; on failure $work/err is shown). Without the model the
# test skips (exit 77), or fails when CI=true.
M="$shared/models/stories260K" C="$shared/data/tinystories_v2_calib.txt"
if [ ! -d "$M" ]; then
  [ "${CI:-}" = "true" ] && { echo "FAIL: $M missing"; exit 1; }
  echo "skip: no $M"; exit 77
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail=0
check() {
  if eval "$2"; then echo "ok:   $1"
  else echo "FAIL: $1"; [ -f "$work/err" ] && cat "$work/err"; fail=1; fi
}
