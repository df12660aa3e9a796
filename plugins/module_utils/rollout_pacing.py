# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""The rollout's pacing (extra vars that become the play's serial and max_fail_percentage), checked
before any host changes: Ansible templates them only when the rollout play starts, after the host
stack ran, and answers a bad one with a traceback ("abc") or a silent surprise (serial 0 is "all hosts",
so a canary of 0 would roll out the whole fleet at once)."""
from __future__ import annotations

import re

PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def _count_error(name, value, allow_percent):
    text = str(value).strip()
    percent = PERCENT.match(text) if allow_percent else None
    if percent:
        if 0 < float(percent.group(1)) <= 100:
            return None
        return "%s=%s: a percentage must be above 0%% and at most 100%%" % (name, text)
    if isinstance(value, bool) or not re.match(r"^\d+$", text):
        kinds = "a whole number of hosts or a percentage such as 25%" if allow_percent else "a whole number of hosts"
        return "%s=%r is not %s" % (name, value, kinds)
    if int(text) < 1:
        return "%s=%s: at least 1 host (0 would mean every host at once)" % (name, text)
    return None


def pacing_errors(canary_hosts, batch_size, max_fail_percentage):
    """Why the pacing extra vars cannot run, each naming the variable and what it takes; [] when fine."""
    errors = [_count_error("rollout_canary_hosts", canary_hosts, allow_percent=False),
              _count_error("rollout_batch_size", batch_size, allow_percent=True)]
    text = str(max_fail_percentage).strip()
    if isinstance(max_fail_percentage, bool) or not re.match(r"^\d+(\.\d+)?$", text) or not 0 <= float(text) <= 100:
        errors.append("rollout_max_fail_percentage=%r is not a percentage from 0 to 100 (0: stop at the first "
                      "failed host)" % (max_fail_percentage,))
    return ["%s. Fix: -e with a valid value (docs/rollout.md)" % e for e in errors if e]
