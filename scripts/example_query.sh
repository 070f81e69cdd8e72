#!/usr/bin/env bash
# Waits for a vecrec server to accept connections, then asks it for a user's
# recommendations and for a free-text search, printing both as tables.
#
#   scripts/example_query.sh [ADDR]        (default 127.0.0.1:50051)
#
# VECREC_WAIT_S (default 300) bounds the wait: `make run` starts this before
# the server has loaded its index.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ADDR="${1:-127.0.0.1:50051}"
WAIT_S="${VECREC_WAIT_S:-300}"

if [[ -z "${VECREC_PYTHON:-}" ]]; then
  ENV_SH="${VECREC_CACHE:-$REPO/.cache}/env.sh"
  [[ -f "$ENV_SH" ]] || { echo "example: $ENV_SH missing; run scripts/setup.sh" >&2; exit 1; }
  # shellcheck source=/dev/null
  . "$ENV_SH"
fi

host="${ADDR%:*}"
port="${ADDR##*:}"
deadline=$((SECONDS + WAIT_S))
until (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do
  if ((SECONDS >= deadline)); then
    echo "example: no server at $ADDR after ${WAIT_S}s" >&2
    exit 1
  fi
  sleep 0.5
done

echo
echo "example: $VECREC_PYTHON scripts/query.py $ADDR recommend u0001 5"
"$VECREC_PYTHON" "$REPO/scripts/query.py" "$ADDR" recommend u0001 5
echo
echo "example: $VECREC_PYTHON scripts/query.py $ADDR search \"space adventure\" 5"
"$VECREC_PYTHON" "$REPO/scripts/query.py" "$ADDR" search "space adventure" 5
echo
