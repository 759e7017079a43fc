#!/usr/bin/env bash
# The web front end's CI step, for .ci/run (run it before pytest, which then finds web/dist and
# web/node_modules for tests/test_web_e2e.py): installs Debian's chromium for the browser test
# if it is missing, then `npm ci && npm run build && npm test` in web/. Idempotent; any failure
# exits non-zero. Needs Node.js 20.19+ and npm; chromium needs root (or sudo) the first time.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  echo "web/ci.sh: installing chromium (Debian package) for the end-to-end test"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q chromium
fi
"${CHROMIUM:-/usr/bin/chromium}" --version

node --version
npm --version
npm ci --no-audit --no-fund
npm run build
npm test
