#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: benchmark_report
short_description: Write engine benchmark results as one CSV and one SVG plot per host group
version_added: 0.1.0
description:
  - Takes the results of C(gpufleet.serving.engine_benchmark) from several hosts and writes, per host
    group, C(<dest>/<group>.csv) (one row per engine and concurrency level) and C(<dest>/<group>.svg)
    (output tokens/s and median TTFT against concurrency, one line per engine).
  - "Meant for the controller (C(delegate_to: localhost)); needs no plotting library."
author:
  - gpufleet maintainers (@gpufleet)
attributes:
  check_mode:
    support: none
    description: Writes files; skipped in check mode.
  diff_mode:
    support: none
    description: Returns no diff.
  idempotent:
    support: full
    description: The same results write the same files; C(changed) only when a file's content changes.
options:
  results:
    description:
      - One entry per engine - C(group), C(host), C(container), C(engine) and C(levels) (the RV(gpufleet.serving.engine_benchmark#module:levels)
        return value).
    type: list
    elements: dict
    required: true
  dest:
    description: Directory of the files; created when missing.
    type: path
    required: true
"""

EXAMPLES = r"""
- name: CSV and plot per host group
  gpufleet.serving.benchmark_report:
    results: "{{ ansible_play_hosts | map('extract', hostvars, 'engine_benchmark') | flatten }}"
    dest: "{{ playbook_dir }}/bench"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
files:
  description: Paths written (or already up to date), a CSV and an SVG per group.
  returned: success
  type: list
  elements: str
  sample: [/srv/bench/hopper.csv, /srv/bench/hopper.svg]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.serving.plugins.module_utils import bench_report


def main():
    module = AnsibleModule(
        argument_spec=dict(
            results=dict(type="list", elements="dict", required=True),
            dest=dict(type="path", required=True),
        ),
        supports_check_mode=False,
    )
    missing = [r for r in module.params["results"] if not {"group", "host", "container", "engine", "levels"} <= set(r)]
    if missing:
        module.fail_json(msg="each result needs group, host, container, engine and levels; got %s" % missing[0])
    files, changed = bench_report.write_reports(module.params["results"], module.params["dest"])
    module.exit_json(changed=changed, files=files)


if __name__ == "__main__":
    main()
