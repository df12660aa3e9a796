"""The rollout pacing extra vars are checked before any host changes (module_utils/rollout_pacing.py)."""
import pytest

from ansible_collections.gpufleet.serving.plugins.module_utils.rollout_pacing import pacing_errors


@pytest.mark.parametrize("canary,batch,max_fail", [(1, "25%", 0), ("2", 3, "20"), (1, "100%", 100), (1, " 50 % ", 12.5)])
def test_valid_pacing_passes(canary, batch, max_fail):
    assert pacing_errors(canary, batch, max_fail) == []


@pytest.mark.parametrize("canary,batch,max_fail,variable,says", [
    (1, "abc", 0, "rollout_batch_size", "is not a whole number of hosts or a percentage"),
    (1, -2, 0, "rollout_batch_size", "is not a whole number"),
    (1, "0%", 0, "rollout_batch_size", "above 0%"),
    (1, "150%", 0, "rollout_batch_size", "at most 100%"),
    (1, 0, 0, "rollout_batch_size", "at least 1 host"),
    (0, "25%", 0, "rollout_canary_hosts", "0 would mean every host at once"),
    ("10%", "25%", 0, "rollout_canary_hosts", "is not a whole number of hosts"),
    (True, "25%", 0, "rollout_canary_hosts", "is not a whole number"),
    (1, "25%", 150, "rollout_max_fail_percentage", "from 0 to 100"),
    (1, "25%", "x", "rollout_max_fail_percentage", "from 0 to 100"),
])
def test_bad_pacing_names_the_variable_and_the_fix(canary, batch, max_fail, variable, says):
    errors = pacing_errors(canary, batch, max_fail)
    assert len(errors) == 1 and errors[0].startswith(variable) and says in errors[0], errors
    assert errors[0].endswith("Fix: -e with a valid value (docs/rollout.md)")
