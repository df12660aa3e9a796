# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""Action plugin: names the run for the run_lock module, and tells a dead run of this controller from a live one."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import time

from ansible.plugins.action import ActionBase
from ansible_collections.gpufleet.serving.plugins.module_utils import run_lock

MODULE = "gpufleet.serving.run_lock"


class ActionModule(ActionBase):
    """The run's identity is the ansible-playbook process: ansible-core forks every worker that runs a task
    from it, so os.getppid() here is the same for every task and host of a run, and no variable has to
    carry a run id from play to play (site.yml, or playbooks/rollout.yml run alone)."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("state", "path", "max_age", "break_lock"))

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        task_vars = task_vars or {}
        host = task_vars.get("inventory_hostname", "host")
        me = run_lock.controller_run(os.getppid())
        args = dict(self._task.args, owner=me)
        done = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
        if done.get("verdict") == run_lock.REFUSE and run_lock.dead_here(done.get("holder"), me):
            # Only the controller can see that the holder's ansible-playbook is gone: one more call, which
            # replaces that run's lock only if the file still holds it.
            done = self._execute_module(module_name=MODULE, module_args=dict(args, takeover=done["holder"]["run_id"]),
                                        task_vars=task_vars)
        result.update(done)
        if done.get("failed"):
            return result
        now = time.time()
        if done.get("verdict") == run_lock.REFUSE:
            try:
                max_age = int(self._task.args.get("max_age", 21600))
            except (TypeError, ValueError):
                max_age = 0
            result.update(failed=True, msg=run_lock.refusal(host, done["lock_file"], done["holder"], now, max_age))
        elif done.get("verdict") == run_lock.TAKE:
            result.setdefault("warnings", []).append(run_lock.takeover(host, done["holder"], done["why"], now))
        return result
