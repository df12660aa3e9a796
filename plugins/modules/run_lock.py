#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: run_lock
short_description: Lock a host against a second run of the collection while one is changing it
version_added: 1.1.0
description:
  - O(state=acquired) takes the host's run lock for this run - a file that names the run (its id, controller
    host name, the C(ansible-playbook) process id, user and start time) - and fails, naming the run that holds
    it and how to recover, when another run does. site.yml takes it on every host it is about to change, right
    after preflight; a second run on the same fleet stops there, before it changes anything (docs/rollout.md
    "Two runs at once").
  - Another run's lock is taken over, with a warning, when that run is dead - same controller (host name and
    boot) and its C(ansible-playbook) process is gone, as after a killed or failed run - when it is older than
    O(max_age), or on request (O(break_lock)).
  - O(state=released) removes the lock when it is this run's, and leaves another run's in place.
  - Who "this run" is comes from the controller, through the action plugin of the same name - the
    C(ansible-playbook) process every task of a run shares. Each state is one module call on the host (a second
    one only to take over the lock of a dead run of the same controller, which only the controller can tell).
author:
  - gpufleet maintainers (@gpufleet)
attributes:
  action:
    support: full
    description: The action plugin names the run and checks on the controller whether a holder of the same controller is alive.
  check_mode:
    support: full
    description: Reports what it would do (RV(verdict)) and writes nothing; a lock held by another live run still fails.
  diff_mode:
    support: none
    description: Returns no diff.
  idempotent:
    support: full
    description:
      - Never reports a change. The lock is the collection's bookkeeping of a run, like the converge stamp, not state of the
        host; RV(verdict) tells what was done.
options:
  state:
    description:
      - V(acquired) takes the lock for this run; V(released) gives this run's lock back.
    type: str
    choices: [acquired, released]
    default: acquired
  path:
    description: The lock file. Its directory is created (mode 0700) when missing.
    type: path
    default: /var/lib/gpufleet/run.lock
  max_age:
    description:
      - Seconds after which another run's lock is taken over (by the host's clock, from when that run took it).
      - V(0) never takes a lock over for its age.
    type: int
    default: 21600
  break_lock:
    description: Take over another run's lock whatever its age. Only after making sure that run is dead.
    type: bool
    default: false
  owner:
    description:
      - This run, set by the action plugin; do not set it.
    type: dict
  takeover:
    description:
      - The id of a run the action plugin found dead; its lock is replaced if the file still holds it. Set by the
        action plugin; do not set it.
    type: str
notes:
  - The file is read and written under an exclusive C(flock) on its directory, and replaced atomically, so two runs
    that try at the same moment cannot both win.
"""

EXAMPLES = r"""
- name: Take the run lock on every host this run changes
  gpufleet.serving.run_lock:
    state: acquired
    max_age: 21600
  register: gpufleet_run_lock

- name: Give it back at the end of the run
  gpufleet.serving.run_lock:
    state: released
"""

RETURN = r"""
verdict:
  description:
    - V(acquire) (no lock was there), V(ours) (this run holds it), V(take) (another run's lock was taken over),
      V(refuse) (another live run holds it; the task fails) for O(state=acquired).
    - V(released), V(absent) (no lock) or V(other) (another run's lock, left in place) for O(state=released).
  returned: always
  type: str
  sample: acquire
why:
  description: The reason for RV(verdict), in words.
  returned: always
  type: str
  sample: its ansible-playbook process is gone from its controller (a killed or failed run)
lock:
  description:
    - The record of this run in the lock file (O(state=acquired), not for V(refuse)).
    - C(run_id) is C(controller:pid:start), C(started) the start of the run and C(acquired_at) when this host's lock was
      taken (epoch seconds).
  returned: when acquired
  type: dict
  sample: {"run_id": "ctl-1:4242:1767950000.12", "controller": "ctl-1", "boot_id": "6f1...", "pid": 4242,
           "started": 1767950000.12, "user": "deploy", "acquired_at": 1767950031.5, "schema": 1}
holder:
  description: The other run's record - the lock that was taken over (V(take)), that is in the way (V(refuse)) or that was left (V(other)).
  returned: when another run's lock was found
  type: dict
lock_file:
  description: The lock file (not C(path), which would make Ansible add the file's owner and mode to the result).
  returned: always
  type: str
  sample: /var/lib/gpufleet/run.lock
"""

import fcntl
import json
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpufleet.serving.plugins.module_utils import atomic_file
from ansible_collections.gpufleet.serving.plugins.module_utils import run_lock


def read(path):
    """The record, None when there is none; a file that is no record is an unknown run's lock."""
    try:
        with open(path) as handle:
            text = handle.read()
    except (IOError, OSError):
        return None
    if not text.strip():
        return None
    try:
        lock = json.loads(text)
        if isinstance(lock, dict):
            return lock
    except ValueError:
        pass
    return {"unreadable": path, "acquired_at": os.stat(path).st_mtime}


def write(path, lock):
    atomic_file.write_json(path, lock, mode=0o644)  # nothing secret; the directory is root's


def guarded(module, path, work):
    """work() under an exclusive flock of the lock's directory: read, decide and write are one step."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        if module.check_mode:
            return work()  # nothing there to read or lock; nothing is written
        os.makedirs(directory, 0o700)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return work()
    finally:
        os.close(fd)  # closing drops the flock


def acquire(module, path, owner, now):
    params = module.params
    lock = read(path)
    verdict, why = run_lock.decide(lock, owner["run_id"], now, params["max_age"], params["break_lock"],
                                   params["takeover"])
    result = dict(verdict=verdict, why=why, lock_file=path)
    if verdict in (run_lock.TAKE, run_lock.REFUSE):
        result["holder"] = lock
    if verdict == run_lock.REFUSE:
        return result
    mine = lock if verdict == run_lock.OURS else run_lock.record(owner, now)
    if verdict != run_lock.OURS and not module.check_mode:
        write(path, mine)
    result["lock"] = mine
    return result


def release(module, path, owner):
    lock = read(path)
    if not lock:
        return dict(verdict="absent", why="no lock", lock_file=path)
    if lock.get("run_id") != owner["run_id"]:
        return dict(verdict="other", why="another run's lock, left in place", lock_file=path, holder=lock)
    if not module.check_mode:
        os.remove(path)
    return dict(verdict="released", why="this run's lock", lock_file=path)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["acquired", "released"], default="acquired"),
            path=dict(type="path", default="/var/lib/gpufleet/run.lock"),
            max_age=dict(type="int", default=21600),
            break_lock=dict(type="bool", default=False),
            owner=dict(type="dict"),
            takeover=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    owner = module.params["owner"]
    if not owner or not owner.get("run_id"):
        module.fail_json(msg="owner is set by the gpufleet.serving.run_lock action plugin; call the module by that name")
    path = module.params["path"]
    work = (lambda: acquire(module, path, owner, time.time())) if module.params["state"] == "acquired" else (
        lambda: release(module, path, owner))
    try:
        result = guarded(module, path, work)
    except (IOError, OSError) as exc:
        module.fail_json(msg="Cannot use the run lock %s: %s (the lock needs root on the host: become)" % (path, exc),
                         lock_file=path)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
