"""Driver policy: which branch a host needs and whether the loaded driver is it."""
import pytest
from gpu_fixtures import gpu_facts

from ansible_collections.gpufleet.serving.plugins.plugin_utils.driver_policy import (
    DriverPolicyError, check_driver, wanted_driver)


def test_h100_on_580_open_is_right():
    result = check_driver(gpu_facts("h100", driver="580.159.04"), host="hopper-1")
    assert result == {"ok": True, "reason": "", "wanted_branch": "580", "loaded_branch": "580",
                      "open_required": False}


def test_blackwell_requires_open_modules():
    result = check_driver(gpu_facts("rtx5090", kernel_module="proprietary"))
    assert not result["ok"] and result["open_required"]
    assert "open kernel modules" in result["reason"] and "-open" in result["reason"]


def test_old_branch_loaded_names_the_needed_branch():
    result = check_driver(gpu_facts("l40s", driver="535.230.02"))
    assert not result["ok"]
    assert "535.230.02" in result["reason"] and "branch 580" in result["reason"]


def test_pinned_older_branch_is_accepted_when_above_the_arch_minimum():
    assert check_driver(gpu_facts("l40s", driver="535.230.02"), branch="535")["ok"]


def test_blackwell_below_570_is_refused():
    with pytest.raises(DriverPolicyError, match=r"nvidia_driver_branch=535 is below 570.*blackwell"):
        wanted_driver(gpu_facts("rtx5090"), branch="535", host="blackwell-1")


def test_unknown_branch_is_refused_with_the_known_ones():
    with pytest.raises(DriverPolicyError, match=r"nvidia_driver_branch=999 is not a known branch; use one of 535, 570, 580"):
        wanted_driver(gpu_facts("h100"), branch="999")


def test_volta_is_not_supported():
    facts = gpu_facts("h100", compute_capability="7.0")
    with pytest.raises(DriverPolicyError, match="7.0 is not supported"):
        wanted_driver(facts)


@pytest.mark.parametrize("state,fix", [("driver_not_loaded", "reboot"), ("no_driver", "install the NVIDIA driver"),
                                       ("no_gpu", "lspci")])
def test_unhealthy_states_name_the_fix(state, fix):
    result = check_driver({"state": state, "message": "nvidia-smi says no"})
    assert not result["ok"] and fix in result["reason"] and "nvidia-smi says no" in result["reason"]
