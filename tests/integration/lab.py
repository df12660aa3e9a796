"""Helpers for tests that drive the lab fleet: run playbooks, read recaps, look inside lab hosts."""
import os
import re
import subprocess

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(REPO_ROOT, ".venv", "bin")
LAB_HOSTS = ["turing-1", "blackwell-1", "l40s-1", "hopper-1"]
RECAP_LINE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def lab_is_up():
    res = subprocess.run(["docker", "inspect", "-f", "{{.State.Status}}", "gpufleet-lab-hopper-1"],
                         capture_output=True, text=True)
    return res.returncode == 0 and res.stdout.strip() == "running"


def ansible_env(**extra):
    env = dict(os.environ)
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env.update(extra)
    return env


def run_playbook(playbook, *args, **env):
    """Runs ansible-playbook against the lab inventory; returns (returncode, output, recap by host)."""
    cmd = [os.path.join(VENV_BIN, "ansible-playbook"), playbook, "-i", "inventories/lab", *args]
    res = subprocess.run(cmd, cwd=REPO_ROOT, env=ansible_env(**env), capture_output=True, text=True)
    output = res.stdout + res.stderr
    recap = {m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)),
                          "unreachable": int(m.group(4)), "failed": int(m.group(5))}
             for m in RECAP_LINE.finditer(output)}
    return res.returncode, output, recap


def host_exec(host, script):
    """Runs a shell script inside a lab host (as root) and returns the completed process."""
    return subprocess.run(["docker", "exec", f"gpufleet-lab-{host}", "bash", "-c", script],
                          capture_output=True, text=True)
