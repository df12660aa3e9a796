"""`ansible-test sanity --venv` and antsibull-docs' collection-docs lint, through scripts/sanity.sh (its
header says how it runs them offline and where it caches the venvs). Zero errors; the only exceptions are
tests/sanity/ignore-2.19.txt's entries, each with its reason. On 2 cores sanity takes about 50 s warm
(90 s cold), the docs lint 10 s (30 s cold), so they run where GPUFLEET_REQUIRE_SANITY=1 is set
(scripts/test.sh, scripts/test-fast.sh) and are skipped, saying so, elsewhere."""
import os
import subprocess

import pytest
from units_under_ansible_test import UNITS_FORKED_TOO_SLOW, modules_under_ansible_test, unit_modules

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(REPO, "scripts", "sanity.sh")

requires_sanity = pytest.mark.skipif(not os.environ.get("GPUFLEET_REQUIRE_SANITY"),
                                     reason="GPUFLEET_REQUIRE_SANITY is not set (scripts/test.sh sets it)")


def run(what):
    proc = subprocess.run([SCRIPT, what], cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    return proc.returncode, proc.stdout + proc.stderr


@requires_sanity
def test_ansible_test_sanity_has_no_error():
    rc, out = run("sanity")
    assert rc == 0, out[-8000:]
    # Exit 0 with nothing checked is what a collection ansible-test cannot find its files in looks like.
    assert "All targets skipped" not in out, out[-4000:]
    for test in ("validate-modules", "import", "pylint", "pep8", "shebang", "replace-urlopen", "symlinks"):
        assert 'Running sanity test "%s"' % test in out, (test, out[-4000:])
    assert "ERROR:" not in out, out[-8000:]
    # A test whose tool is missing is skipped with a warning, not failed (bootstrap.sh installs shellcheck).
    assert "Required program" not in out, out[-4000:]


def test_ignore_entries_each_give_a_reason():
    with open(os.path.join(REPO, "tests", "sanity", "ignore-2.19.txt")) as handle:
        entries = [line.rstrip("\n") for line in handle if line.strip()]
    assert entries
    for entry in entries:
        path, _sep, reason = entry.partition(" # ")
        assert len(path.split()) == 2 and len(reason.strip()) > 20, entry
        assert os.path.exists(os.path.join(REPO, path.split()[0])), entry


@requires_sanity
def test_antsibull_docs_lint_collection_docs_has_no_error():
    rc, out = run("docs")
    assert rc == 0, out[-8000:]


@requires_sanity
def test_ansible_test_units_runs_the_unit_tests():
    """Runs the unit test modules of units_under_ansible_test.py under `ansible-test units` (see its docstring).
    When this test is in a pytest session, conftest.py leaves those modules to it: they run once."""
    names = unit_modules()
    assert UNITS_FORKED_TOO_SLOW <= set(names), UNITS_FORKED_TOO_SLOW - set(names)  # a renamed file would run
    targets = ["tests/unit/" + n for n in modules_under_ansible_test()]
    proc = subprocess.run([SCRIPT, "units"] + targets, cwd=REPO, capture_output=True, text=True,
                          timeout=1200, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    summary = [line for line in out.splitlines() if " passed" in line and " in " in line]
    assert summary and "failed" not in summary[-1] and "error" not in summary[-1], out[-4000:]
    assert int(summary[-1].split(" passed")[0].split()[-1]) > 500, summary[-1]
