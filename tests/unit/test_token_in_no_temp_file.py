"""Module arguments never land in a file: the project's ansible.cfg pipelines every connection, the
controller's own (local) included, so an HF token given to a task on the controller is in no
AnsiballZ file under the temp dirs while the task runs (a killed run would leave that file behind)."""
import os
import socket
import subprocess
import sys
import time

from fixtures.hf_server import REPO_ROOT

TOKEN = "hf_NeverInAFile0123456789"


def files_holding(token, *roots):
    found = []
    for root in roots:
        for folder, _unused, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                try:
                    with open(path, "rb") as handle:
                        if token.encode() in handle.read():
                            found.append(path)
                except OSError:
                    pass
    return found


def test_a_controller_task_with_a_token_writes_no_file(tmp_path):
    silent = socket.socket()  # a hub that never answers keeps the task running while we look
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    local_tmp, remote_tmp = tmp_path / "local", tmp_path / "remote"
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO_ROOT, "ansible.cfg"),
               ANSIBLE_LOCAL_TEMP=str(local_tmp), ANSIBLE_REMOTE_TMP=str(remote_tmp))
    args = ("repo_id=gpufleet/tiny-qwen2 revision=main state=resolved timeout=8 token=%s "
            "endpoint=http://127.0.0.1:%d" % (TOKEN, silent.getsockname()[1]))
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-c", "local",
                             "-m", "gpufleet.serving.hf_model", "-a", args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and proc.poll() is None:
            assert files_holding(TOKEN, local_tmp, remote_tmp) == []
            time.sleep(0.2)
        assert proc.poll() is None, "the task ended before it could be watched: %s" % proc.stdout.read()
        out, _unused = proc.communicate(timeout=60)
    finally:
        silent.close()
        if proc.poll() is None:
            proc.kill()
    assert "did not answer within 8 s" in out and TOKEN not in out, out
    assert files_holding(TOKEN, local_tmp, remote_tmp) == []
