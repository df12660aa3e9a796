"""A rollout that stops still ends with its report: the batch gate (rollout_gate), the report's
NOT-ROLLED-OUT and unreachable rows, Prometheus targets that keep every host still serving, and the
repair of an interrupted swap (engine_swap_repair)."""
import json

from ansible_collections.gpufleet.serving.plugins.filter.fleet import FilterModule as Fleet
from ansible_collections.gpufleet.serving.plugins.filter.rollout import FilterModule as Rollout
from test_fleet_rollout import host, record, release, rows

FLEET = Fleet().filters()
GATE = Rollout().filters()["rollout_gate"]
HOSTS = ["c", "b1", "b2", "b3"]
UNREACHABLE = {"unreachable": True, "msg": "Failed to connect to the host via ssh: Connection reset by peer"}


def fleet(**states):
    """hostvars: every host healthy and updated unless `states` says `failed`, `unreachable` or `later`
    (not reached yet)."""
    hv = {}
    for h in HOSTS:
        state = states.get(h, "updated")
        hv[h] = host(rollout=record(release(), release("sglang", "0.5.24")))
        hv[h]["engine_reach"] = {"ping": "pong"}
        if state == "failed":
            hv[h]["engine_rollout"] = record(release(), release(), rolled_back=True, cause="health gate: crashed")
        elif state == "unreachable":
            hv[h] = {"engine_reach": UNREACHABLE}
        elif state == "later":
            hv[h] = {}
    return hv


def test_a_failed_canary_stops_and_names_the_hosts_left():
    gate = GATE(fleet(c="failed", b1="later", b2="later", b3="later"), HOSTS, HOSTS, ["c"], 0)
    assert gate["stop"] and gate["failed"] == ["c"] and gate["lost"] == ["c"]
    assert gate["not_rolled_out"] == ["b1", "b2", "b3"]
    assert gate["message"] == ("Rollout stopped after batch c: c failed (1 of 4 hosts lost, 1 of 1 in this batch), "
                               "more than rollout_max_fail_percentage=0%. Not rolled out, left as they are: b1, b2, b3.")


def test_the_batch_share_stops_as_ansible_max_fail_percentage_did():
    """A failed canary is 100 % of its batch: 30 % stops it, though 1 of 4 hosts is only 25 % of the fleet."""
    hv = fleet(c="failed", b1="later", b2="later", b3="later")
    assert GATE(hv, HOSTS, HOSTS, ["c"], 30)["stop"]
    assert not GATE(hv, HOSTS, HOSTS, ["c"], 100)["stop"]


def test_unreachable_hosts_count_whether_found_by_the_probe_or_removed_by_ansible():
    hv = fleet(b1="unreachable", b3="later")
    gate = GATE(hv, HOSTS, HOSTS, ["b1", "b2"], 50)
    assert not gate["stop"] and gate["unreachable"] == ["b1"] and gate["not_rolled_out"] == ["b3"]
    gate = GATE(hv, HOSTS, ["c", "b1", "b3"], ["b1", "b2"], 25)     # b2 lost mid-task too: 2 of 2, 2 of 4
    assert gate["stop"] and gate["lost"] == ["b1", "b2"] and gate["not_rolled_out"] == ["b3"]
    assert "b1, b2 unreachable (2 of 4 hosts lost, 2 of 2 in this batch)" in gate["message"]


def test_nothing_left_to_roll_out_is_no_stop():
    """The last batch lost a host: the report names it, the run fails, but nothing is left to stop."""
    gate = GATE(fleet(b2="unreachable"), HOSTS, HOSTS, ["b1", "b2", "b3"], 0)
    assert not gate["stop"] and gate["lost"] == ["b2"] and gate["not_rolled_out"] == [] and gate["message"] == ""


def test_a_refusing_gateway_stops_before_the_batch_changes_anything():
    hv = fleet(b1="later", b2="later", b3="later")
    gate = GATE(hv, HOSTS, HOSTS, ["b1", "b2"], 0, refused=["gw-1: qwen would keep 0 ready workers"])
    assert gate["stop"] and gate["not_rolled_out"] == ["b1", "b2", "b3"]
    assert gate["message"].startswith("Rollout stopped before batch b1, b2: gw-1: qwen would keep 0 ready workers")


def test_the_report_names_lost_and_not_rolled_out_hosts_and_the_stop():
    hv = fleet(c="failed", b1="unreachable", b2="later", b3="later")
    gate = GATE(hv, HOSTS, HOSTS, ["c"], 0)
    lines = FLEET["fleet_summary"](hv, HOSTS, lost=[], stopped=gate)
    status = {h: line.split()[-1] for h, line in rows(lines[:-1]).items()}
    assert status == {"c": "ROLLED-BACK", "b1": "UNREACHABLE/FAILED", "b2": "NOT-ROLLED-OUT", "b3": "NOT-ROLLED-OUT"}
    assert lines[-3] == "c: health gate: crashed"
    assert lines[-2] == "b1: unreachable when its batch started, not changed: " + UNREACHABLE["msg"]
    assert lines[-1] == gate["message"]


def test_file_sd_keeps_every_host_whose_engine_still_serves():
    """Only hosts this run proved get new targets; a host that failed preflight (no facts), an unreachable
    one, one not rolled out and one rolled back keep what the file listed for them."""
    old = FLEET["prometheus_file_sd"]({h: host(ip="10.0.0.%d" % i) for i, h in enumerate(HOSTS + ["pf"])},
                                      HOSTS + ["pf"])
    hv = fleet(c="failed", b1="unreachable", b2="later")
    hv["b3"] = host(ip="10.0.0.3", port=30001)                    # rolled out: its new port
    hv["c"]["engine_deployments"][0]["port"] = 39999              # the plan the rollback undid
    hv["pf"] = {}
    groups = FLEET["prometheus_file_sd"](hv, HOSTS + ["pf"], previous=json.dumps(old), inventory_hosts=HOSTS + ["pf"])
    assert sorted((g["labels"]["host"], g["targets"][0]) for g in groups) == [
        ("b1", "10.0.0.1:30000"), ("b2", "10.0.0.2:30000"), ("b3", "10.0.0.3:30001"), ("c", "10.0.0.0:30000"),
        ("pf", "10.0.0.4:30000")]


def container(name, state):
    return {"Names": ["/" + name], "State": state, "Labels": {"gpufleet.plan_hash": "x"}}


def test_a_running_previous_without_its_name_becomes_the_current_container():
    repair = FLEET["engine_swap_repair"]([container("gpufleet-engine-previous", "running")])
    assert repair == {"restore": ["gpufleet-engine"], "remove": [], "stop": []}


def test_a_running_previous_beside_a_name_that_does_not_run_replaces_it():
    for state in ("created", "exited", "restarting"):
        repair = FLEET["engine_swap_repair"]([container("e", state), container("e-previous", "running")])
        assert repair == {"restore": ["e"], "remove": ["e"], "stop": []}, state


def test_a_running_previous_beside_a_running_name_is_stopped_and_a_stopped_one_left():
    repair = FLEET["engine_swap_repair"]([container("a", "running"), container("a-previous", "running"),
                                          container("b-previous", "exited"), container("c", "running")])
    assert repair == {"restore": [], "remove": [], "stop": ["a-previous"]}
    # verbose docker inspect shape too
    inspect = {"Name": "/a-previous", "State": {"Running": True}}
    assert FLEET["engine_swap_repair"]([inspect])["restore"] == ["a"]


MAX_FAIL_ERRORS = Rollout().filters()["rollout_max_fail_errors"]


def test_one_rollout_max_fail_percentage_for_the_rollout():
    """The gate reads it on each batch's first host: a value per host would apply depending on the batch order."""
    assert MAX_FAIL_ERRORS({h: {} for h in HOSTS}, HOSTS) == []
    assert MAX_FAIL_ERRORS({h: {"rollout_max_fail_percentage": 20} for h in HOSTS}, HOSTS) == []
    hv = {h: {"rollout_max_fail_percentage": 20} for h in HOSTS}
    hv["b2"] = {"rollout_max_fail_percentage": "50"}
    errors = MAX_FAIL_ERRORS(hv, HOSTS)
    assert len(errors) == 1 and "20 on c, b1, b3; 50 on b2" in errors[0] and "Fix: set it once" in errors[0], errors
    hv["b2"] = {"rollout_max_fail_percentage": 150}
    errors = MAX_FAIL_ERRORS(hv, HOSTS)
    assert errors == ["rollout_max_fail_percentage=150 is not a percentage from 0 to 100 (0: stop at the first failed "
                      "host) (b2). Fix: -e with a valid value (docs/rollout.md)"], errors


def test_a_canary_lost_during_its_deployment_stops_the_rollout_and_is_reported_as_such():
    """rollout.yml's reach_after_deploy.yml: the canary (a batch of one) answered the probe, then went away while
    it deployed. It stays in the play (its unreachable tasks are ignored), recorded with engine_reach and an empty
    engine_rollout: the gate stops the rollout, the report names it lost, not failed with its last task's error."""
    hv = fleet(b1="later", b2="later", b3="later")
    hv["c"]["engine_reach"] = dict(UNREACHABLE, during_deployment=True)
    hv["c"]["engine_rollout"] = FLEET["engine_rollout_record"]([], [], [], [])
    gate = GATE(hv, HOSTS, HOSTS, ["c"], 0)                 # still active: Ansible did not remove it
    assert gate["stop"] and gate["unreachable"] == ["c"] and gate["failed"] == []
    assert gate["not_rolled_out"] == ["b1", "b2", "b3"]
    lines = FLEET["fleet_summary"](hv, HOSTS, lost=[], stopped=gate)
    assert rows(lines[:-1])["c"].split()[-1] == "UNREACHABLE/FAILED"
    assert lines[-2] == "c: lost during its deployment, what it runs now is unknown: " + UNREACHABLE["msg"]
    assert lines[-1].startswith("Rollout stopped after batch c: c unreachable")
