"""ansible-lint (pinned in requirements.txt), production profile, zero findings. The rules skipped are in
.ansible-lint, each with its reason. The self-link under collections/ is excluded: through it the linter
walks the tree again and again (minutes instead of seconds)."""
import os
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_ansible_lint_production_profile_has_no_finding():
    lint = os.path.join(os.path.dirname(sys.executable), "ansible-lint")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"))
    proc = subprocess.run([lint, "--offline", "--nocolor", "-f", "pep8", "-q"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    findings = [line for line in proc.stdout.splitlines() if line.strip()]
    assert proc.returncode == 0 and not findings, proc.stdout[-4000:] + proc.stderr[-2000:]
