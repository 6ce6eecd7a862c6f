#!/usr/bin/env bash
# Installs the Debian packages the tests need (espeak-ng, sox, flite, chromium) when they are missing.
# Needs root and apt-get; otherwise says what to install and goes on (the tests that need them skip).
set -u
need=()
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v sox >/dev/null || need+=(sox)
command -v flite >/dev/null || need+=(flite)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "system-deps: missing ${need[*]}; install them with: sudo apt-get install ${need[*]} (not root or no apt-get here)" >&2
    exit 0
fi
echo "system-deps: installing ${need[*]}"
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
