#!/usr/bin/env bash
# Create .venv-parsers: the pinned SGLang and vLLM (no GPU dependencies) whose real argument parsers
# tests/parsers/test_real_parsers.py checks every generated plan against. See README.md.
#
# Idempotent: skips everything when .venv-parsers/.gpufleet-stamp holds the hash of
# requirements.txt + this script + the Python version. A half-built venv has no stamp and is rebuilt.
# Usage: bash tests/parsers/setup_venv.sh [--force]
# Env:   GPUFLEET_PARSERS_VENV (default <repo>/.venv-parsers), PYTHON (default python3.11)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${GPUFLEET_PARSERS_VENV:-$root/.venv-parsers}"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
requirements="$here/requirements.txt"
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
exec 9>"$root/.cache/venv-parsers.lock"
flock 9

if [ "${1:-}" != "--force" ] && [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "setup_venv: $venv is up to date ($(elapsed)s)"
    exit 0
fi

echo "setup_venv: building $venv with $python"
rm -rf "$venv"
"$python" -m venv "$venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
# --no-deps: the requirements file is the complete list (the engines' declared dependencies would
# pull CUDA kernels and several GB). --no-compile: Python compiles what it imports on first use.
"$venv/bin/python" -m pip install -qq --no-deps --no-compile -r "$requirements"
echo "setup_venv: installed $(wc -l < <(grep -Ev '^\s*(#|$)' "$requirements")) pinned packages ($(elapsed)s)"

torch_build="$("$venv/bin/python" -c \
    'import torch; print(torch.__version__, "CUDA build" if torch.version.cuda else "CPU build")' 2>/dev/null)"
echo "setup_venv: torch $torch_build"

# The venv is only good if both real parsers build and give the expected verdicts.
if ! "$venv/bin/python" "$here/real_parsers.py" --self-check > "$venv/self-check.log" 2>&1; then
    cat "$venv/self-check.log" >&2
    echo "setup_venv: self-check FAILED; $venv left without a stamp" >&2
    exit 1
fi
grep -E '^(ok|FAIL)' "$venv/self-check.log" | cut -c1-110
echo "$want" > "$stamp"
echo "setup_venv: built $venv in $(elapsed)s ($(du -sh "$venv" | cut -f1))"
