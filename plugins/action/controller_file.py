# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""Action plugin: write a file on the controller, in the controller process (see modules/controller_file.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import tempfile

from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    """copy + delegate_to localhost starts two Python processes (stat, then copy) on every run; a
    report file the controller writes for itself needs neither."""

    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset(("content", "dest", "mode"))

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        dest = os.path.abspath(os.path.expanduser(self._task.args["dest"]))
        content = to_bytes(self._task.args.get("content", ""))
        mode = int(str(self._task.args.get("mode", "0644")), 8)
        try:
            with open(dest, "rb") as handle:
                before = handle.read()
        except (IOError, OSError):
            before = None
        changed = before != content or (before is not None and os.stat(dest).st_mode & 0o7777 != mode)
        if changed and not self._task.check_mode:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            fd, tmp_path = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".%s." % os.path.basename(dest))
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            os.chmod(tmp_path, mode)
            os.rename(tmp_path, dest)
        result.update(changed=changed, dest=dest)
        if self._task.diff and before != content:
            result["diff"] = {"before": to_text(before or b""), "after": to_text(content),
                              "before_header": dest, "after_header": dest}
        return result
