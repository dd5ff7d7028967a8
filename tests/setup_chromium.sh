#!/usr/bin/env bash
# Installs Debian's chromium for the Flower end-to-end test when it is missing (idempotent).
# Never fails the run: without chromium the Flower test fails loudly and says why.
set -u
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup_chromium: chromium is missing; install Debian's 'chromium' package (apt-get install chromium)" >&2
  exit 0
fi
echo "setup_chromium: installing chromium (apt-get)" >&2
{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
  >/dev/null || echo "setup_chromium: apt-get could not install chromium" >&2
exit 0
