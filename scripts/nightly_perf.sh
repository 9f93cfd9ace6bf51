#!/usr/bin/env bash
# Nightly perf: run the matrix in MATRIX.yaml with `trtbuild perf`, append every series to the
# SQLite history (the matrix's `history:`, else $TRTBUILD_PERF_DB, else --db), compare each metric
# with the median of the series' last runs, and exit 1 with one line per regression.
#
#   scripts/nightly_perf.sh MATRIX.yaml [--db HISTORY.sqlite] [--compare-only]
#
# Cron-able: no terminal needed, one run at a time (a second waits for the lock, then gives up
# after $TRTBUILD_PERF_LOCK_WAIT seconds, default 3600), output on stdout/stderr for the mailer or
# the journal. Exit status: 0 no regression, 1 a regression or a failed run, 2 bad input.
# Examples (cron, systemd timer, Kubernetes CronJob): docs/perf.md.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  [[ $# -ge 1 ]] && exit 0 || exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${TRTBUILD:-}" ]]; then
  trtbuild="$TRTBUILD"                       # an explicit binary
elif [[ -x "$root/.venv/bin/trtbuild" ]]; then
  trtbuild="$root/.venv/bin/trtbuild"        # this checkout's `make setup`
elif command -v trtbuild >/dev/null; then
  trtbuild="$(command -v trtbuild)"          # an installed trtbuild
else
  echo "Error: trtbuild not found; run 'make setup' in $root, or set TRTBUILD=/path/to/trtbuild" >&2
  exit 2
fi

lock="${TRTBUILD_PERF_LOCK:-${TMPDIR:-/tmp}/trtbuild-nightly-perf.lock}"
if command -v flock >/dev/null; then
  exec 9>"$lock"
  if ! flock -w "${TRTBUILD_PERF_LOCK_WAIT:-3600}" 9; then
    echo "Error: another nightly perf run holds $lock; not starting a second one" >&2
    exit 1
  fi
fi

echo "nightly perf: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), $("$trtbuild" --version)" >&2
exec "$trtbuild" perf nightly "$@"
