#!/usr/bin/env bash
# The image's entrypoint.
#   IMAGE [all|web|scheduler] [serve options]   migrate once (under a lock), then run that role
#   IMAGE python manage.py <command>             anything else runs as given
# The role may also come from ROLE (default: all). `serve` waits for the database, applies the
# migrations under a lock shared by every container, and supervises gunicorn and qcluster.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python}"
role="${ROLE:-all}"
if [[ $# -gt 0 && "$1" =~ ^(all|web|scheduler)$ ]]; then
  role="$1"
  shift
elif [[ $# -gt 0 && "$1" != -* ]]; then
  exec "$@"
fi
if [[ ! "$role" =~ ^(all|web|scheduler)$ ]]; then
  echo "entrypoint: unknown role '$role' (all, web or scheduler)" >&2
  exit 64
fi
exec "$python" manage.py serve --role "$role" "$@"
