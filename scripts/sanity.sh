#!/usr/bin/env bash
# `ansible-test sanity --venv` and antsibull-docs' collection-docs lint, offline apart from PyPI.
#
# - ansible-test wants the collection at .../ansible_collections/gpufleet/serving. The checkout's own
#   collections/ansible_collections/gpufleet/serving is a link back to the root: through it ansible-test
#   would see the tree inside itself. So the files git knows (tracked, and new ones not ignored) are
#   synced into .cache/sanity/ansible_collections/gpufleet/serving, without collections/ (build_ignore
#   keeps it out of the tarball too), and the tests run there. The copy is a git repo of its own (never
#   committed to): ansible-test lists a collection's files with git from the nearest .git up the tree, and
#   from this checkout's .git it would find none under the ignored .cache/.
# - ansible-test bootstraps pip in each venv with get-pip.py from ci-files.testing.ansible.com, a host
#   this CI cannot reach. It uses ~/.ansible/test/cache/get_pip_<version>.py when it is there, so a
#   stand-in goes there that does what get-pip.py does (put the pip wheel on sys.path and run
#   `pip install`), with the pip wheel downloaded from PyPI.
# - HOME points at .cache/sanity/home for ansible-test: its sanity venvs (~/.ansible/test/venv) and that
#   get-pip cache stay there, so a second run installs nothing. pip keeps the user's config and cache.
# - `units` runs `ansible-test units` the same way: its venv gets ansible-test's pytest and the pins of
#   tests/unit/requirements.txt. The tests that need docker, the lab or the real-parser venvs skip there.
# Usage: scripts/sanity.sh [sanity|docs|all] [extra ansible-test sanity args]   (default: all)
#        scripts/sanity.sh units [extra ansible-test units args, e.g. tests/unit/test_x.py]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
what=${1:-all}
[ $# -gt 0 ] && shift
CACHE=$ROOT/.cache/sanity
# units runs in a copy of its own (.cache/units): a sanity run at the same time re-syncs its copy under it.
COLLECTIONS=$CACHE
[ "$what" = units ] && COLLECTIONS=$ROOT/.cache/units
COPY=$COLLECTIONS/ansible_collections/gpufleet/serving
PY=$ROOT/.venv/bin/python
mkdir -p "$CACHE/home" "$COPY"

sync_copy() {
  local list=$COLLECTIONS/files.txt
  git ls-files -z -co --exclude-standard --deduplicate | tr '\0' '\n' \
    | grep -v '^collections/' | while IFS= read -r f; do [ -e "$f" ] && printf '%s\n' "$f"; done \
    | sort >"$list"
  rsync -a --files-from="$list" "$ROOT/" "$COPY/"
  # Files gone from the checkout go from the copy too (tests/output is ansible-test's own, .git the copy's).
  (cd "$COPY" && find . \( -path ./tests/output -o -path ./.git \) -prune -o \( -type f -o -type l \) -print | sed 's|^\./||' | sort) \
    | comm -23 - "$list" | (cd "$COPY" && xargs -r -d '\n' rm -f --)
  [ -d "$COPY/.git" ] || git init -q "$COPY"
}

run_ansible_test() {  # run_ansible_test sanity|units [args]
  local command=$1 pip_version wheel_dir getpip
  shift
  pip_version=$("$PY" -c "from types import SimpleNamespace as N
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(N(version='3.11'))['pip'])")
  wheel_dir=$CACHE/wheels
  getpip=$CACHE/home/.ansible/test/cache/get_pip_${pip_version//./_}.py
  if ! ls "$wheel_dir"/pip-"$pip_version"-*.whl >/dev/null 2>&1; then
    "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$wheel_dir" "pip==$pip_version"
  fi
  mkdir -p "$(dirname "$getpip")"
  cat >"$getpip" <<EOF
# Stand-in for get-pip.py $pip_version (written by scripts/sanity.sh): runs pip from its PyPI wheel.
import glob
import sys
wheel = glob.glob("$wheel_dir/pip-$pip_version-*.whl")[0]
sys.path.insert(0, wheel)
from pip._internal.cli.main import main  # noqa: E402
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", "--find-links", "$wheel_dir"] + args))
EOF
  local config=${XDG_CONFIG_HOME:-$HOME/.config} cache=${XDG_CACHE_HOME:-$HOME/.cache}
  (cd "$COPY" && XDG_CONFIG_HOME=$config XDG_CACHE_HOME=$cache HOME=$CACHE/home "$ROOT/.venv/bin/ansible-test" "$command" --venv --python 3.11 --color no "$@")
}

run_docs() {
  # antsibull-docs (190 MB with what it pulls in) in a cached venv of its own rather than in
  # requirements.txt, with .venv's ansible-core; rebuilt only when either version changes.
  local venv=$CACHE/antsibull-docs pin
  pin="antsibull-docs==2.28.0 ansible-core==$("$PY" -c 'import ansible; print(ansible.__version__)')"
  if [ "$(cat "$venv/.pin" 2>/dev/null)" != "$pin" ]; then
    rm -rf "$venv"
    "$PY" -m venv "$venv"
    # shellcheck disable=SC2086  # two requirement specifiers
    "$venv/bin/pip" install -q --disable-pip-version-check $pin
    echo "$pin" >"$venv/.pin"
  fi
  # The collections this one depends on (galaxy.yml) come from the `ansible` package in .venv.
  local deps
  deps=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  (cd "$COPY" && PATH=$venv/bin:$PATH ANSIBLE_COLLECTIONS_PATH=$CACHE:$deps "$venv/bin/antsibull-docs" lint-collection-docs --plugin-docs .)
}

sync_copy
case $what in
  sanity) run_ansible_test sanity "$@" ;;
  units)
    # The unit tests run ansible-playbook, ansible-lint and `python -m ansible_collections...` with the
    # checkout's collections/ (ansible.cfg's collections_path): the copy gets the same link back to its root.
    mkdir -p "$COPY/collections/ansible_collections/gpufleet"
    ln -sfn ../../.. "$COPY/collections/ansible_collections/gpufleet/serving"
    run_ansible_test units "$@" ;;
  docs) run_docs ;;
  all) rc=0; run_ansible_test sanity "$@" || rc=$?; run_docs || rc=$?; exit "$rc" ;;
  *) echo "usage: $0 [sanity|docs|all|units] [ansible-test args]" >&2; exit 2 ;;
esac
