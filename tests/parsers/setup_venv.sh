#!/usr/bin/env bash
# Create .venv-parsers: the pinned SGLang and vLLM (no GPU dependencies) whose real argument parsers
# tests/parsers/test_real_parsers.py checks every generated plan against. See README.md.
# With ENGINE-VERSION (e.g. vllm-0.26.0): the venv of that one older engine version,
# .venv-parsers-ENGINE-VERSION, from requirements-ENGINE-VERSION.txt (the knowledge table's other
# versions; requirements.txt holds the newest of each engine).
#
# Idempotent: skips everything when <venv>/.gpufleet-stamp holds the hash of the requirements file
# + this script + the Python version. A half-built venv has no stamp and is rebuilt.
# Usage: bash tests/parsers/setup_venv.sh [--force] [ENGINE-VERSION]
# Env:   GPUFLEET_PARSERS_VENV (default <repo>/.venv-parsers; per-version venvs get -ENGINE-VERSION
#        appended), PYTHON (default python3.11)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
force=""
if [ "${1:-}" = "--force" ]; then force=1; shift; fi
name="${1:-}"
venv="${GPUFLEET_PARSERS_VENV:-$root/.venv-parsers}"
base="$venv"
requirements="$here/requirements.txt"
lock="$root/.cache/venv-parsers.lock"
if [ -n "$name" ]; then
    case "$name" in
        sglang-[0-9]*|vllm-[0-9]*) ;;
        *) echo "setup_venv: ENGINE-VERSION must look like sglang-0.5.1.post2 or vllm-0.26.0, not '$name'" >&2; exit 2 ;;
    esac
    venv="$venv-$name"
    requirements="$here/requirements-$name.txt"
    lock="$root/.cache/venv-parsers-$name.lock"     # one lock per venv: two versions build at once
    if [ ! -f "$requirements" ]; then
        echo "setup_venv: no $requirements (see docs/planning.md, 'Adding an engine version')" >&2
        exit 1
    fi
fi
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
stamp="$venv/.gpufleet-stamp"
start=$EPOCHREALTIME

elapsed() { awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

pyver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$pyver" != "3.11" ]; then
    echo "setup_venv: need Python 3.11 (the pins are cp311 wheels), $python is $pyver" >&2
    exit 1
fi
pyfull="$("$python" -c 'import platform; print(platform.python_version())')"
want="$(cat "$requirements" "$here/setup_venv.sh" | sha256sum | cut -d' ' -f1)-py$pyfull"

mkdir -p "$root/.cache"
exec 9>"$lock"
flock 9

if [ -z "$force" ] && [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "setup_venv: $venv is up to date ($(elapsed)s)"
    exit 0
fi

echo "setup_venv: building $venv with $python"
rm -rf "$venv"
"$python" -m venv "$venv"
if [ -n "$name" ] && [ -f "$base/.gpufleet-stamp" ]; then
    # torch + triton (1.6 GB) as hard links from .venv-parsers where the pins match: see
    # link_shared.py. A shared lock keeps .venv-parsers from being rebuilt meanwhile.
    exec 8>>"$root/.cache/venv-parsers.lock"
    flock -s 8
    "$python" "$here/link_shared.py" "$base" "$venv" "$requirements"
    flock -u 8
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
# --no-deps: the requirements file is the complete list (the engines' declared dependencies would
# pull CUDA kernels and several GB). --no-compile: Python compiles what it imports on first use.
"$venv/bin/python" -m pip install -qq --no-deps --no-compile -r "$requirements"
echo "setup_venv: installed $(wc -l < <(grep -Ev '^\s*(#|$)' "$requirements")) pinned packages ($(elapsed)s)"

torch_build="$("$venv/bin/python" -c \
    'import torch; print(torch.__version__, "CUDA build" if torch.version.cuda else "CPU build")' 2>/dev/null)"
echo "setup_venv: torch $torch_build"

# The venv is only good if its real parsers build and give the expected verdicts.
if ! "$venv/bin/python" "$here/real_parsers.py" --self-check > "$venv/self-check.log" 2>&1; then
    cat "$venv/self-check.log" >&2
    echo "setup_venv: self-check FAILED; $venv left without a stamp" >&2
    exit 1
fi
grep -E '^(ok|FAIL)' "$venv/self-check.log" | cut -c1-110
echo "$want" > "$stamp"
echo "setup_venv: built $venv in $(elapsed)s ($(du -sh "$venv" | cut -f1))"
