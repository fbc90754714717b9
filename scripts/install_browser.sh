#!/usr/bin/env bash
# Debian's chromium for the browser tests (tests/test_browser.py drives it with Playwright; Playwright's own
# browser downloads are not used). Does nothing when a chromium is on PATH. Needs root or sudo for apt-get.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -n "${SSGL_CHROMIUM:-}" ]; then
    exit 0
fi
echo "install_browser: installing Debian's chromium for the browser tests (apt-get; about a minute, 300 MB)"
APT=(apt-get)
if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install_browser: chromium is missing and this user cannot install it; ask for 'apt-get install chromium'" \
             "or set SSGL_CHROMIUM to a Chromium binary" >&2
        exit 1
    fi
    APT=(sudo apt-get)
fi
export DEBIAN_FRONTEND=noninteractive
"${APT[@]}" install -y -qq chromium >/dev/null 2>&1 || { "${APT[@]}" update -qq >/dev/null && "${APT[@]}" install -y -qq chromium >/dev/null; }
echo "install_browser: $(chromium --version)"
