# Sourced by <topic>/make_fixtures.sh after it sets HERE (its own folder): the repository root
# (made the working directory), SHARED (the script's first argument, default ../shared), ORACLE,
# ALL, PYTHON and a scratch folder WORK (removed at exit unless KEEP=1).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$ROOT"
SHARED="$(cd "${1:-../shared}" && pwd)"
ORACLE="$SHARED/oracle"
ALL="$SHARED/data/all"
PYTHON="${PYTHON:-python3}"
if [[ -z "${WORK:-}" ]]; then
  WORK="$(mktemp -d)"
  [[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"
echo "shared=$SHARED work=$WORK out=$HERE" >&2
