#!/usr/bin/env bash
# `make web`: installs the npm packages (npm ci, when the lock changed) and
# builds web/dist, unless dist is newer than every source. A dist built
# elsewhere (the Dockerfile's node stage) is used as is, without npm.
set -euo pipefail
cd "$(dirname "$0")/.."

stamp=dist/index.html
sources=(src public scripts index.html vite.config.ts package.json package-lock.json tsconfig.json)
if [ -f "$stamp" ] && [ -z "$(find "${sources[@]}" -newer "$stamp" -print -quit)" ]; then
	echo "web: dist is up to date"
	exit 0
fi
if ! command -v npm >/dev/null; then
	echo "web: building the web app needs Node.js 20.19+ and npm" >&2
	exit 1
fi
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
	npm ci --no-audit --no-fund
fi
npm run build
