#!/usr/bin/env bash
# Installs what qforge needs on Debian 12 (bookworm). Idempotent: when every
# package is present it returns at once without touching apt.
set -euo pipefail

packages=(
  g++ make cmake pkg-config
  libtorch-dev
  libopenblas0-pthread          # without it LibTorch uses reference BLAS (~25x slower)
  libboost-dev libboost-filesystem-dev libboost-program-options-dev
  libfmt-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev
  libsentencepiece-dev libpcre2-dev libutf8proc-dev
  time                          # /usr/bin/time -v for the memory benchmark
  binutils python3              # tests: strip a plugin, patch files byte-wise
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

echo "setup: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
