# Sourced by the quality scripts (tools/bench/*_quality.sh) with their
# arguments: [build dir] [shared dir]. Sets Q (the qforge binary), M
# (stories260K), D (the shared data) and work (a temporary directory removed
# at exit); exits 2 when the build or the shared data is missing.
build="${1:-build}"
shared="${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)/shared}"
Q="$build/bin/qforge" M="$shared/models/stories260K" D="$shared/data"
[ -x "$Q" ] || { echo "no $Q: build first (tools/build.sh)" >&2; exit 2; }
[ -d "$M" ] || { echo "no $M: the shared data must sit beside the project" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
