"""Filters over the container_toolkit plan (documentation: the sidecar .yml files)."""
from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.serving.plugins.module_utils import container_toolkit as ct
from ansible_collections.gpufleet.serving.plugins.module_utils.driver_packages import DriverPackageError


def toolkit_plan(container_host, gpu_facts=None, os_facts=None, settings=None):
    try:
        return ct.plan_toolkit(container_host, gpu_facts or {}, os_facts or {}, settings or {})
    except (ct.ToolkitError, DriverPackageError) as exc:
        raise AnsibleFilterError(str(exc)) from exc


def toolkit_daemon_json(current_text, wanted=None):
    try:
        return ct.daemon_json(current_text, wanted)
    except ct.ToolkitError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def toolkit_cdi(spec_text, gpu_facts=None, nvidia_ctk=False, enabled=True):
    return ct.cdi_plan(spec_text, gpu_facts or {}, nvidia_ctk, enabled)


def toolkit_gpu_check(gpu_facts, device_nodes=False, runtime_ready=False, setting="auto"):
    return ct.gpu_check(gpu_facts or {}, device_nodes, runtime_ready, setting)


def toolkit_gpu_check_result(output, gpu_facts=None):
    return ct.gpu_check_result(output, gpu_facts or {})


class FilterModule:
    def filters(self):
        return {"toolkit_plan": toolkit_plan, "toolkit_daemon_json": toolkit_daemon_json, "toolkit_cdi": toolkit_cdi,
                "toolkit_gpu_check": toolkit_gpu_check, "toolkit_gpu_check_result": toolkit_gpu_check_result}
