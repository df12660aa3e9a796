"""Filter wrapping the driver policy (documentation: driver_check.yml)."""
from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.serving.plugins.module_utils.driver_policy import (
    DriverPolicyError, check_driver)


def driver_check(gpu_facts, branch=None, host=None):
    try:
        return check_driver(gpu_facts, branch=branch, host=host)
    except DriverPolicyError as exc:
        raise AnsibleFilterError(str(exc)) from exc


class FilterModule:
    def filters(self):
        return {"driver_check": driver_check}
