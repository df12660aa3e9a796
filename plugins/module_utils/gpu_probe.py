# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""Run nvidia-smi from a module and turn its output into the ``gpufleet_gpu`` facts.

Shared by the modules that read the GPUs (gpu_facts, converge_stamp), so a host's GPUs are read
the same way whichever of them runs.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import subprocess

from ansible_collections.gpufleet.serving.plugins.module_utils.nvidia_smi import (
    HEALTHY,
    NvidiaSmiError,
    collect,
)

# The options every GPU-reading module takes, with gpu_facts' documented semantics.
ARGUMENT_SPEC = dict(
    nvidia_smi_path=dict(type="path"),
    timeout=dict(type="int", default=30),
)


def _read_text(path):
    with open(path) as handle:
        return handle.read()


def read_gpu_facts(module, nvidia_smi_path=None, timeout=30):
    """The ``gpufleet_gpu`` facts of this host; fails the module on output that does not parse."""
    path = nvidia_smi_path or module.get_bin_path("nvidia-smi", opt_dirs=["/usr/bin"])
    if path and not os.path.exists(path):
        path = None

    def run(argv):
        # subprocess rather than run_command: run_command has no timeout, and nvidia-smi can hang.
        try:
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False,
                                  timeout=timeout, env=dict(os.environ, LC_ALL="C"))
        except subprocess.TimeoutExpired:
            module.fail_json(msg="%s did not answer within %d seconds" % (" ".join(argv), timeout))
        except OSError as exc:  # present but not runnable counts as no usable driver
            return 127, "", str(exc)
        return proc.returncode, proc.stdout, proc.stderr

    try:
        facts, warnings = collect(path, run, _read_text)
    except (NvidiaSmiError, ValueError) as exc:
        module.fail_json(msg=str(exc))
    for warning in warnings:
        module.warn(warning)
    return facts


def fail_unless_healthy(module, facts):
    """For O(required=true): a host that cannot serve fails, with its facts still returned."""
    if facts["state"] != HEALTHY:
        module.fail_json(msg="GPU required but state is %s: %s" % (facts["state"], facts["message"]),
                         ansible_facts={"gpufleet_gpu": facts})
