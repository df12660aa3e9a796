"""The changelog is well formed: antsibull-changelog (pinned in requirements.txt, never skipped) lints
the fragments and changelogs/changelog.yaml, and CHANGELOG.rst is what it generates from them now."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(os.path.dirname(sys.executable), "antsibull-changelog")


def changelog(*args):
    assert os.path.exists(TOOL), f"{TOOL} is missing: pip install -r requirements.txt"
    return subprocess.run([TOOL, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def test_fragments_lint():
    run = changelog("lint")
    assert run.returncode == 0, run.stdout + run.stderr


def test_changelog_yaml_lints():
    run = changelog("lint-changelog-yaml", "changelogs/changelog.yaml")
    assert run.returncode == 0, run.stdout + run.stderr


def test_changelog_rst_is_generated_from_changelog_yaml(tmp_path):
    out = tmp_path / "CHANGELOG.rst"
    run = changelog("generate", "--output", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    with open(os.path.join(REPO, "CHANGELOG.rst"), encoding="utf-8") as f:
        assert f.read() == out.read_text(encoding="utf-8"), \
            "CHANGELOG.rst is out of date: .venv/bin/antsibull-changelog generate"
