#!/usr/bin/env bash
# Installs the Debian packages a target needs when they are missing.
#   scripts/system-deps.sh run    Python venv support
#   scripts/system-deps.sh test   + PostgreSQL server, DCMTK, Orthanc, Chromium (browser tests),
#                                   Prometheus (promtool; a real server for scrape tests),
#                                   etcd (the operator tests' control plane), iproute2
# As root it uses apt-get; otherwise it says what to install and fails.
set -euo pipefail
target=${1:-run}

missing=()
have_python_venv() {
  local py
  py=$(command -v python3.11 || command -v python3 || true)
  [ -n "$py" ] && "$py" -c 'import ensurepip, venv' 2>/dev/null
}
have_python_venv || missing+=(python3 python3-venv)
if [ "$target" = test ]; then
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null \
    || missing+=(postgresql)
  command -v psql >/dev/null || missing+=(postgresql-client)
  command -v storescu >/dev/null || missing+=(dcmtk)
  command -v Orthanc >/dev/null || missing+=(orthanc)
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v xz >/dev/null || missing+=(xz-utils)
  command -v ip >/dev/null || missing+=(iproute2)  # ip netns (pods as processes), ss
fi

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "system-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Debian's orthanc package would start its own service; no init system runs here, and
  # tests start their own instances on their own ports anyway.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi

echo "system-deps: missing Debian packages: ${missing[*]}" >&2
echo "  install them with: sudo apt-get install ${missing[*]}" >&2
exit 1
