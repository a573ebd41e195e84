#!/usr/bin/env bash
# Install Debian's Chromium when it is missing (the gallery tests drive it headless through
# Playwright; never `playwright install`, which fetches a browser from outside). Prints its path.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! command -v chromium >/dev/null; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq chromium >/dev/null
fi
path=$(command -v chromium)
echo "ci: $("$path" --version 2>/dev/null)" >&2
echo "$path"
