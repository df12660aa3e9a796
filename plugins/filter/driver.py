"""Filters over the driver policy and install plan (documentation: the sidecar .yml files)."""
from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.serving.plugins.module_utils.driver_packages import DriverPackageError
from ansible_collections.gpufleet.serving.plugins.plugin_utils.driver_plan import (
    activation, plan_driver, verify_loaded)
from ansible_collections.gpufleet.serving.plugins.plugin_utils.driver_policy import (
    DriverPolicyError, check_driver)


def _filter_errors(function):
    def wrapped(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (DriverPolicyError, DriverPackageError) as exc:
            raise AnsibleFilterError(str(exc)) from exc
    wrapped.__name__ = function.__name__
    return wrapped


@_filter_errors
def driver_check(gpu_facts, branch=None, host=None):
    return check_driver(gpu_facts, branch=branch, host=host)


@_filter_errors
def driver_plan(driver_host, gpu_facts=None, os_facts=None, settings=None, host=None):
    return plan_driver(driver_host, gpu_facts or {}, os_facts or {}, settings or {}, hostname=host)


@_filter_errors
def driver_activation(driver_host, plan=None, gpu_facts=None, changed=False, reboot="auto", host=None):
    return activation(plan, driver_host, gpu_facts or {}, changed, reboot_mode=reboot, hostname=host)


@_filter_errors
def driver_verify(driver_host, plan=None, gpu_facts=None, host=None):
    return verify_loaded(plan, driver_host, gpu_facts or {}, hostname=host)


class FilterModule:
    def filters(self):
        return {"driver_check": driver_check, "driver_plan": driver_plan,
                "driver_activation": driver_activation, "driver_verify": driver_verify}
