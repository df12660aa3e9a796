"""Helpers for tests that drive the lab fleet: run playbooks, read recaps, look inside lab hosts."""
import os
import re
import subprocess

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(REPO_ROOT, ".venv", "bin")
LAB_HOSTS = ["turing-1", "blackwell-1", "l40s-1", "hopper-1"]
LAB_GATEWAYS = ["gateway-1"]  # no GPU: the router of the lab's model (roles/gateway)
RECAP_LINE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def lab_is_up():
    res = subprocess.run(["docker", "inspect", "-f", "{{.State.Status}}", "gpufleet-lab-hopper-1"],
                         capture_output=True, text=True, check=False)
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
    res = subprocess.run(cmd, cwd=REPO_ROOT, env=ansible_env(**env), capture_output=True, text=True, check=False)
    output = res.stdout + res.stderr
    recap = {m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)),
                          "unreachable": int(m.group(4)), "failed": int(m.group(5))}
             for m in RECAP_LINE.finditer(output)}
    return res.returncode, output, recap


def task_msg(output, task):
    """The msg of the debug task `task` last printed in `output` (read as YAML: the callback folds long lines)."""
    import yaml  # only the tests need it, not the helpers above

    part = output[output.rindex("TASK [%s" % task):].splitlines()
    start = next(i for i, line in enumerate(part) if line.startswith("ok: ["))
    block = []
    for line in part[start + 1:]:
        if not line.strip():
            break
        block.append(line)
    return yaml.safe_load("\n".join(block))["msg"]


def host_exec(host, script):
    """Runs a shell script inside a lab host (as root) and returns the completed process."""
    return subprocess.run(["docker", "exec", f"gpufleet-lab-{host}", "bash", "-c", script],
                          capture_output=True, text=True, check=False)


def labctl(fleet_file, command):
    return subprocess.run([os.path.join(VENV_BIN, "python"), os.path.join(REPO_ROOT, "lab", "labctl.py"), command,
                           "--fleet", fleet_file], cwd=REPO_ROOT, capture_output=True, text=True, check=False)


def fresh_fleet(fleet_file, name):
    """Brings an extra fleet up from bare hosts for a test module (one left by an interrupted session is
    removed first). A missing prerequisite skips, or fails under GPUFLEET_REQUIRE_LAB."""
    import pytest  # only the tests need it, not the helpers above

    labctl(fleet_file, "down")
    up = labctl(fleet_file, "up")
    if up.returncode != 0:
        labctl(fleet_file, "down")
        message = "the %s fleet did not come up: %s" % (name, (up.stdout + up.stderr)[-2000:])
        if os.environ.get("GPUFLEET_REQUIRE_LAB"):
            pytest.fail(message)
        pytest.skip(message)


PAUSE_TASK = "TASK [gpufleet.serving.engine : Pause before the next batch]"
# Resets every SSH packet, the open ControlPersist connection's too: the host is unreachable at once.
SSH_RESET = "iptables -%s INPUT -p tcp --dport 22 -j REJECT --reject-with tcp-reset"


def run_losing_host_at_pause(cmd, container, trigger=PAUSE_TASK, occurrence=1):
    """Runs an ansible-playbook command line; when the rollout's first pause begins (or the `occurrence`-th
    line starting with `trigger`), `container` (a lab host's container name) stops answering SSH until the
    run ends. Returns (returncode, output, blocked: the iptables call, or None when no such line came)."""
    def block(verb):
        return subprocess.run(["docker", "exec", container, "bash", "-c", SSH_RESET % verb], capture_output=True,
                              text=True, check=False)

    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=ansible_env(PYTHONUNBUFFERED="1"), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, blocked, seen = [], None, 0
    try:
        for line in proc.stdout:
            lines.append(line)
            seen += line.startswith(trigger)
            if blocked is None and seen == occurrence:
                blocked = block("I")
        rc = proc.wait(timeout=600)
    finally:
        block("D")
    return rc, "".join(lines), blocked
