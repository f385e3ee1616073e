#!/usr/bin/env bash
# The image's entrypoint.
#   IMAGE [all|web|scheduler] [serve options]   migrate once (under a lock), then run that role
#   IMAGE migrate                                apply the migrations and exit (a deploy's job)
#   IMAGE python manage.py <command>             anything else runs as given
# The role may also come from ROLE (default: all). `serve` waits for the database, applies the
# migrations under a lock shared by every container (unless RUN_MIGRATIONS=false: then the
# `migrate` job does, once), and supervises gunicorn and qcluster.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python}"
role="${ROLE:-all}"
if [[ $# -gt 0 && "$1" =~ ^(all|web|scheduler|migrate)$ ]]; then
  role="$1"
  shift
elif [[ $# -gt 0 && "$1" != -* ]]; then
  exec "$@"
fi
if [[ ! "$role" =~ ^(all|web|scheduler|migrate)$ ]]; then
  echo "entrypoint: unknown role '$role' (all, web, scheduler or migrate)" >&2
  exit 64
fi
exec "$python" manage.py serve --role "$role" "$@"
