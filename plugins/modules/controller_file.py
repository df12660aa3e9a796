#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

# Documentation only: the work is done by the action plugin of the same name, on the controller.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: controller_file
short_description: Write a file on the controller, without starting a module process
version_added: 0.2.0
description:
  - Writes O(content) to O(dest) on the Ansible controller, atomically, only when the content or mode differs.
  - Runs inside the controller's own process (an action plugin), so a report written on every run, such as
    the Prometheus file_sd targets of the fleet, costs no Python process start. Use it with C(run_once).
author:
  - gpufleet maintainers (@gpufleet)
attributes:
  action:
    support: full
    description: Runs on the controller only; the target host is never contacted.
  check_mode:
    support: full
    description: Reports whether the file would change and writes nothing.
  diff_mode:
    support: full
    description: Shows the old and new content.
  idempotent:
    support: full
    description: Writes only when content or mode differ.
options:
  content:
    description: What the file holds.
    type: str
    required: true
  dest:
    description: Path on the controller; missing parent directories are created.
    type: path
    required: true
  mode:
    description: Octal file mode.
    type: str
    default: "0644"
"""

EXAMPLES = r"""
- name: The fleet's Prometheus targets, on the controller
  gpufleet.serving.controller_file:
    content: "{{ hostvars | gpufleet.serving.prometheus_file_sd(ansible_play_hosts_all) | to_nice_json }}\n"
    dest: /etc/prometheus/file_sd/gpufleet.json
  run_once: true
"""

RETURN = r"""
dest:
  description: The absolute path written.
  returned: always
  type: str
"""
