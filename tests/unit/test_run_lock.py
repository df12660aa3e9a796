"""The run lock (docs/rollout.md "Two runs at once"): the decision from the lock's contents (module_utils/run_lock.py),
then the module, its action plugin and the preflight role's lock/unlock entry points through real ansible-playbook
runs on local hosts - two runs at once among them."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from ansible_collections.gpufleet.serving.plugins.module_utils import run_lock

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
NOW = 1_800_000_000.0
MINE = "ctl:100:1799999000.00"


def foreign(run_id="other-ctl:4242:1799990000.00", age=60, **more):
    lock = {"run_id": run_id, "controller": run_id.split(":")[0], "boot_id": "b", "pid": int(run_id.split(":")[1]),
            "started": NOW - age - 5, "user": "alice", "acquired_at": NOW - age, "schema": 1}
    lock.update(more)
    return lock


@pytest.mark.parametrize("lock, kwargs, verdict", [
    (None, {}, run_lock.ACQUIRE),
    ({}, {}, run_lock.ACQUIRE),
    (foreign(MINE), {}, run_lock.OURS),
    (foreign(), {}, run_lock.REFUSE),                                      # another run, alive as far as we know
    (foreign(), {"break_lock": True}, run_lock.TAKE),
    (foreign(), {"dead_run": "other-ctl:4242:1799990000.00"}, run_lock.TAKE),  # the controller found it dead
    (foreign(), {"dead_run": "other-ctl:9:1.00"}, run_lock.REFUSE),        # a third run took it meanwhile
    (foreign(age=7 * 3600), {}, run_lock.TAKE),                            # older than max_age (6 h)
    (foreign(age=7 * 3600), {"max_age": 0}, run_lock.REFUSE),              # 0: never for its age
    ({"unreadable": "/x", "acquired_at": NOW - 60}, {}, run_lock.REFUSE),
    ({"unreadable": "/x", "acquired_at": NOW - 60}, {"break_lock": True}, run_lock.TAKE),
])
def test_decide(lock, kwargs, verdict):
    args = dict({"max_age": 21600}, **kwargs)
    assert run_lock.decide(lock, MINE, NOW, args.pop("max_age"), **args)[0] == verdict


def test_this_process_is_alive_and_a_finished_one_is_dead():
    me = run_lock.controller_run(os.getpid())
    assert me["controller"] == socket.gethostname() and me["pid"] == os.getpid()
    assert me["run_id"] == "%s:%d:%.2f" % (socket.gethostname(), os.getpid(), me["started"])
    assert abs(me["started"] - time.time()) < 24 * 3600 and run_lock.controller_run(os.getpid()) == me
    child = subprocess.Popen(["true"])
    child.wait()
    gone = dict(me, pid=child.pid, run_id="%s:%d:%.2f" % (me["controller"], child.pid, me["started"]))
    assert run_lock.dead_here(gone, me) and not run_lock.dead_here(me, me)
    assert not run_lock.dead_here(dict(gone, controller="elsewhere"), me)  # another controller: cannot tell
    assert not run_lock.dead_here(dict(gone, boot_id="another-boot"), me)  # same name, other boot: cannot tell


def test_refusal_names_the_run_and_the_way_out():
    text = run_lock.refusal("hopper-1", "/var/lib/gpufleet/run.lock", foreign(age=125), NOW, 21600)
    for part in ("hopper-1 is locked by another run", "controller other-ctl", "pid 4242", "user alice",
                 "lock taken 2m05s ago", "no ansible-playbook of it runs any more on other-ctl",
                 "-e gpufleet_break_lock=true", "gpufleet_lock_max_age=21600s"):
        assert part in text, (part, text)


# --- through ansible-playbook ----------------------------------------------------------------------------

PLAY = """
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.import_role: {name: gpufleet.serving.preflight, tasks_from: lock, rolespec_validate: false}
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.copy:  # what each lock holds mid-run
        src: "{{ gpufleet_lock_path }}"
        dest: "{{ playbook_dir }}/seen-{{ inventory_hostname }}.json"
        mode: "0644"
      when: not ansible_check_mode
    - ansible.builtin.wait_for: {path: "{{ playbook_dir }}/go", timeout: 60}
      when: hold | default(false) | bool
    - ansible.builtin.fail: {msg: this host is lost}
      when: inventory_hostname in lose | default([])
- hosts: "{{ groups['gpufleet_locked'] | default([]) }}"
  gather_facts: false
  tasks:
    - ansible.builtin.import_role: {name: gpufleet.serving.preflight, tasks_from: unlock, rolespec_validate: false}
"""


def setup(tmp, hosts=("a", "b")):
    inventory = {"all": {"hosts": {h: {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                                       "gpufleet_lock_path": str(tmp / ("%s.lock" % h))} for h in hosts}}}
    (tmp / "inventory.json").write_text(json.dumps(inventory))
    (tmp / "play.yml").write_text(PLAY)
    (tmp / "ansible.cfg").write_text("")


def start(tmp, *args):
    env = dict(os.environ, ANSIBLE_CONFIG=str(tmp / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, "collections"),
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_FORCE_COLOR="0", ANSIBLE_RETRY_FILES_ENABLED="false")
    return subprocess.Popen([ANSIBLE_PLAYBOOK, "-i", str(tmp / "inventory.json"), str(tmp / "play.yml"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(tmp))


def play(tmp, *args):
    proc = start(tmp, *args)
    output = proc.communicate(timeout=120)[0]
    return proc.returncode, output, proc.pid


def flat(output):
    return " ".join(output.split())  # the callback folds long messages


def test_run_takes_each_hosts_lock_and_gives_it_back(tmp_path):
    setup(tmp_path)
    rc, output, pid = play(tmp_path)
    assert rc == 0, output
    assert output.count("changed: [") == 2, output  # the test's own copies: the lock is bookkeeping, never a change
    for host in ("a", "b"):
        seen = json.loads((tmp_path / ("seen-%s.json" % host)).read_text())
        assert seen["pid"] == pid and seen["controller"] == socket.gethostname()  # the ansible-playbook process
        assert seen["run_id"].startswith("%s:%d:" % (socket.gethostname(), pid)) and seen["acquired_at"] <= time.time()
        assert not (tmp_path / ("%s.lock" % host)).exists()
    assert json.loads((tmp_path / "seen-a.json").read_text())["run_id"] == json.loads(
        (tmp_path / "seen-b.json").read_text())["run_id"]


def test_check_mode_writes_no_lock(tmp_path):
    setup(tmp_path)
    rc, output, _unused = play(tmp_path, "--check")
    assert rc == 0, output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ansible.cfg", "inventory.json", "play.yml"]
    held = json.dumps(foreign(acquired_at=time.time()))  # a check run is refused like a real one: it would be
    (tmp_path / "b.lock").write_text(held)
    rc, output, _unused = play(tmp_path, "--check")
    assert rc != 0 and "b is locked by another run" in flat(output) and (tmp_path / "b.lock").read_text() == held
    assert not (tmp_path / "a.lock").exists()


def test_a_host_another_run_holds_stops_the_run_and_its_other_locks_are_given_back(tmp_path):
    setup(tmp_path, ("a", "b", "c"))
    held = foreign(age=30, acquired_at=time.time() - 30)
    (tmp_path / "b.lock").write_text(json.dumps(held))
    (tmp_path / "c.lock").write_text("not a lock record")
    rc, output, _unused = play(tmp_path)
    text = flat(output)
    assert rc != 0
    assert ("b is locked by another run of gpufleet.serving: run other-ctl:4242:1799990000.00 (controller other-ctl, "
            "pid 4242, user alice") in text, text
    assert "-e gpufleet_break_lock=true" in text and "c is locked by another run of gpufleet.serving: an unreadable" in text
    assert "Stopped before any host changed: another run holds b, c (see above). This run gave its locks on a back." in text
    assert json.loads((tmp_path / "b.lock").read_text()) == held and not (tmp_path / "a.lock").exists()
    assert not list(tmp_path.glob("seen-*")), "the run went on"


def test_a_live_run_of_this_controller_is_refused(tmp_path):
    setup(tmp_path, ("a",))
    me = run_lock.controller_run(os.getpid())  # this pytest process stands for a running ansible-playbook
    (tmp_path / "a.lock").write_text(json.dumps(run_lock.record(me, time.time())))
    rc, output, _unused = play(tmp_path)
    assert rc != 0 and "a is locked by another run of gpufleet.serving: run %s " % me["run_id"] in flat(output), output


def test_dead_run_of_this_controller_and_a_too_old_lock_are_taken_over_with_a_warning(tmp_path):
    setup(tmp_path)
    me = run_lock.controller_run(os.getpid())
    child = subprocess.Popen(["true"])
    child.wait()
    dead = dict(run_lock.record(me, time.time() - 10), pid=child.pid,
                run_id="%s:%d:%.2f" % (me["controller"], child.pid, me["started"]))
    (tmp_path / "a.lock").write_text(json.dumps(dead))
    (tmp_path / "b.lock").write_text(json.dumps(foreign(acquired_at=time.time() - 7 * 3600)))
    rc, output, pid = play(tmp_path)
    text = flat(output)
    assert rc == 0, output
    assert "a: took over the lock of run %s" % dead["run_id"] in text
    assert "its ansible-playbook process is gone from its controller (a killed or failed run)" in text
    assert "b: took over the lock of run other-ctl:4242" in text and "older than gpufleet_lock_max_age=21600s" in text
    assert json.loads((tmp_path / "seen-a.json").read_text())["pid"] == pid
    assert not (tmp_path / "a.lock").exists() and not (tmp_path / "b.lock").exists()


def test_break_lock_takes_another_controllers_lock(tmp_path):
    setup(tmp_path, ("a",))
    (tmp_path / "a.lock").write_text(json.dumps(foreign(acquired_at=time.time())))
    rc, output, _unused = play(tmp_path, "-e", "gpufleet_break_lock=true")
    assert rc == 0 and "broken on request (gpufleet_break_lock=true)" in flat(output), output


def test_a_host_lost_on_the_way_gets_its_lock_back_at_the_end(tmp_path):
    setup(tmp_path)
    rc, output, _unused = play(tmp_path, "-e", '{"lose": ["a"]}')
    assert rc != 0 and "this host is lost" in output
    assert "Give back the run lock of the hosts this run lost" in output
    assert not (tmp_path / "a.lock").exists() and not (tmp_path / "b.lock").exists(), output


def test_second_run_at_once_fails_naming_the_first_which_finishes(tmp_path):
    setup(tmp_path)
    first = start(tmp_path, "-e", "hold=true")
    try:
        deadline = time.time() + 60
        while not (tmp_path / "seen-b.json").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert (tmp_path / "a.lock").exists(), "the first run took no lock"
        rc, output, _unused = play(tmp_path)
        text = flat(output)
        assert rc != 0
        for host in ("a", "b"):  # every host refused: each says by whom, and the run ends there
            assert "%s is locked by another run of gpufleet.serving: run %s:%d:" % (
                host, socket.gethostname(), first.pid) in text, text
        assert "pid %d, user" % first.pid in text and "PLAY [['a', 'b']]" not in text
        assert first.poll() is None, "the first run must still be running"
    finally:
        (tmp_path / "go").write_text("")
        output = first.communicate(timeout=120)[0]
    assert first.returncode == 0, output
    assert not (tmp_path / "a.lock").exists() and not (tmp_path / "b.lock").exists()


# --- wiring ----------------------------------------------------------------------------------------------

def load(path):
    with open(os.path.join(REPO, path)) as handle:
        return yaml.safe_load(handle)


def entry(play):
    task = play["tasks"][0].get("ansible.builtin.import_role") or {}
    return task.get("name"), task.get("tasks_from")


def test_site_locks_after_preflight_and_rollout_gives_back_last():
    site = load("playbooks/site.yml")
    names = [p.get("name", "") for p in site]
    lock = names.index("Run lock - taken on every host this run changes")
    assert names[lock - 1].startswith("Preflight") and names[lock + 1].startswith("Host stack")
    assert site[lock]["hosts"] == site[lock + 1]["hosts"]  # exactly the hosts the run changes
    assert entry(site[lock]) == ("gpufleet.serving.preflight", "lock")
    rollout = load("playbooks/rollout.yml")
    names = [p["name"] for p in rollout]
    assert names.index("Run lock - taken on every host this rollout changes") < names.index(
        next(n for n in names if n.startswith("Roll the engine out")))
    # last but the outcome play, which only fails the run (a stopped rollout gives its locks back too)
    assert entry(rollout[-2]) == ("gpufleet.serving.preflight", "unlock")
    assert rollout[-1]["name"].startswith("Rollout outcome")


@pytest.mark.parametrize("tasks", ["lock", "unlock"])
def test_per_host_lock_tasks_template_no_filter(tasks):
    """One module call per host and no filter in its arguments (docs/scale.md): the fleet's work is run_once."""
    per_host = [t for t in load("roles/preflight/tasks/%s.yml" % tasks)
                if not t.get("run_once") and "ansible.builtin.add_host" not in t]
    assert len(per_host) == 1 and "gpufleet.serving.run_lock" in per_host[0]
    assert "|" not in json.dumps({k: v for k, v in per_host[0].items() if k != "name"})


def test_module_documentation_renders():
    doc = os.path.join(os.path.dirname(sys.executable), "ansible-doc")
    done = subprocess.run([doc, "-t", "module", "gpufleet.serving.run_lock"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0 and "ERROR" not in done.stderr, done.stderr
