#!/usr/bin/env bash
# Install Debian's chromium (and its driver) for the dashboard's browser test.
# Idempotent: does nothing when /usr/bin/chromium is already there. Needs root (CI runs as root).
# Never downloads a browser build of its own: only Debian's packages, through apt-get.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "install-browser: $(/usr/bin/chromium --version 2>/dev/null || echo chromium) already installed"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: apt-get not found; the browser test will be skipped" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        echo "install-browser: not root and no sudo; the browser test will be skipped" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium; }; then
    echo "install-browser: could not install chromium; the browser test will be skipped" >&2
    exit 0
fi
echo "install-browser: $(/usr/bin/chromium --version 2>/dev/null || echo 'chromium installed')"
