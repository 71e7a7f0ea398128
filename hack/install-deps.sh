#!/usr/bin/env bash
# Installs the given Debian/Ubuntu packages when they are missing, with sudo
# when not root; COMMAND=PACKAGE installs PACKAGE when COMMAND is missing. Used by `make deps` (and so `make run`) and .ci/run.
set -euo pipefail
missing=()
for p in "$@"; do
  # COMMAND=PACKAGE: install PACKAGE only when COMMAND is not found (npm may
  # come from a nodejs package that is not Debian's).
  if [[ "$p" == *=* ]]; then
    command -v "${p%%=*}" >/dev/null 2>&1 || missing+=("${p#*=}")
    continue
  fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${missing[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
