"""site.yml end to end on the lab fleet: every host healthy, a second run changes nothing, and bad
input stops the run in preflight before any host changes."""
import json

import pytest
from lab import LAB_GATEWAYS, LAB_HOSTS, host_exec, run_playbook, task_msg

pytestmark = pytest.mark.lab


def engine_started_at(host):
    res = host_exec(host, "docker inspect -f '{{.State.StartedAt}}' gpufleet-engine")
    return res.stdout.strip() if res.returncode == 0 else None


@pytest.fixture(scope="module")
def first_run(lab):
    return run_playbook("site.yml")


def play_section(output, play):
    """The output of one play, from its PLAY line to the next."""
    section = output[output.index("PLAY [" + play):]
    return section[:section.index("PLAY [", 1)]


def test_site_converges_every_host_healthy(first_run):
    rc, output, recap = first_run
    assert rc == 0, output[-4000:]
    assert sorted(h for h in recap if h != "localhost") == sorted(LAB_HOSTS + LAB_GATEWAYS)
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in recap.values()), recap
    summary = output[output.index("TASK [Fleet summary]"):]
    for host in LAB_HOSTS:
        line = next(line for line in summary.splitlines() if line.strip(" -\"'").startswith(host))
        assert "healthy" in line and "FAILED" not in line, line
    gateway = next(line for line in task_msg(output, "Gateway summary") if line.startswith("gateway-1"))
    assert gateway.split()[1:5] == ["http://172.28.10.20:30080", "tiny-qwen2", "cache_aware", "4/4"], gateway
    assert gateway.endswith("healthy"), gateway


def test_engine_answers_on_each_host(first_run):
    for host in LAB_HOSTS:
        res = host_exec(host, "curl -s http://127.0.0.1:$(docker inspect -f "
                              "'{{range $p, $c := .HostConfig.PortBindings}}{{(index $c 0).HostPort}}{{end}}' "
                              "gpufleet-engine)/v1/models")
        assert res.returncode == 0, res.stderr
        assert [m["id"] for m in json.loads(res.stdout)["data"]] == ["tiny-qwen2"]


def test_engine_args_fit_each_gpu(first_run):
    """The launch arguments come from each host's (simulated) GPU: fp16 on Turing, fa3 on Hopper."""
    def cmd(host):
        res = host_exec(host, "docker inspect -f '{{json .Config.Cmd}}' gpufleet-engine")
        return json.loads(res.stdout)

    turing = cmd("turing-1")
    assert turing[turing.index("--dtype") + 1] == "float16"
    hopper = cmd("hopper-1")
    assert hopper[hopper.index("--attention-backend") + 1] == "fa3"


def test_l40s_host_serves_with_its_draft_model_mounted(first_run):
    """Speculative decoding end to end (inventories/lab/group_vars/l40s.yml): the draft snapshot fetched on
    the host, mounted read-only, named on the command line; the engine came through the health gate."""
    res = host_exec("l40s-1", "docker inspect -f '{{json .Config.Cmd}} {{json .Mounts}}' gpufleet-engine")
    cmd_json, mounts_json = res.stdout.split(" ", 1)
    cmd, mounts = json.loads(cmd_json), json.loads(mounts_json)
    assert cmd[cmd.index("--speculative-algorithm") + 1] == "EAGLE3"
    assert cmd[cmd.index("--speculative-draft-model-path") + 1] == "/models/draft"
    draft = [m for m in mounts if m["Destination"] == "/models/draft"]
    assert len(draft) == 1 and draft[0]["RW"] is False, mounts
    assert host_exec("l40s-1", "test -s %s/config.json" % draft[0]["Source"]).returncode == 0
    others = host_exec("hopper-1", "docker inspect -f '{{json .Config.Cmd}}' gpufleet-engine").stdout
    assert "--speculative" not in others  # only the group that asks for it


def test_second_run_changes_nothing(first_run):
    before = {h: engine_started_at(h) for h in LAB_HOSTS}
    rc, output, recap = run_playbook("site.yml")
    assert rc == 0, output[-4000:]
    assert {h: r["changed"] for h, r in recap.items()} == {h: 0 for h in recap}, output[-4000:]
    assert {h: engine_started_at(h) for h in LAB_HOSTS} == before, "an engine container was restarted"


def test_unknown_engine_fails_before_any_change(first_run):
    before = engine_started_at("l40s-1")
    rc, output, recap = run_playbook("site.yml", "--limit", "l40s-1", "-e", "engine_name=tgi")
    assert rc != 0
    assert "engine_name" in output and "l40s-1" in output and "sglang, vllm" in output, output[-3000:]
    assert recap["l40s-1"]["changed"] == 0
    assert "PLAY [Host stack" not in output, "the run went past preflight"
    assert engine_started_at("l40s-1") == before


def test_plans_that_cannot_work_fail_in_preflight_on_every_host_at_once(first_run, tmp_path):
    """Each host gets an input that only the planner can judge (it used to fail minutes later, in the engine
    role, after the host stack): preflight plans every host from the hub's config.json and names them all."""
    bad = tmp_path / "bad-plans.yml"
    bad.write_text(json.dumps({"all": {"hosts": {
        "hopper-1": {"engine_overrides": {"--tp-size": 16}},
        "blackwell-1": {"engine_overrides": {"--gpu-memory-utilization": 1.5}},
        "turing-1": {"engine_instances": [{"name": "gpufleet-engine", "gpus": [5]}]},
        "l40s-1": {"engine_version": "0.0.9"},
    }}}))
    before = {h: engine_started_at(h) for h in LAB_HOSTS}
    rc, output, recap = run_playbook("site.yml", "-i", str(bad))
    assert rc != 0
    assert "PLAY [Host stack" not in output, "the run went past preflight"
    for host, expected in [("hopper-1", "--tp-size 16 needs 16 GPUs"), ("blackwell-1", "--gpu-memory-utilization"),
                           ("turing-1", "5"), ("l40s-1", "engine_version '0.0.9'")]:
        assert any(host in line and expected in line for line in output.splitlines()), (host, output[-4000:])
    assert all(r["changed"] == 0 for r in recap.values())
    assert {h: engine_started_at(h) for h in LAB_HOSTS} == before


def test_bad_rollout_pacing_fails_in_preflight_before_any_change(first_run):
    """rollout_batch_size=abc used to end in an ansible-core traceback after the host stack ran."""
    rc, output, recap = run_playbook("site.yml", "--limit", "turing-1", "-e", "rollout_batch_size=abc",
                                     "-e", "rollout_canary_hosts=0")
    assert rc != 0
    assert "rollout_batch_size='abc' is not a whole number of hosts or a percentage" in output, output[-3000:]
    assert "rollout_canary_hosts=0: at least 1 host" in output
    assert "PLAY [Host stack" not in output and "Traceback" not in output
    assert all(r["changed"] == 0 for r in recap.values())


def test_unknown_model_repo_fails_before_any_change(first_run):
    rc, output, recap = run_playbook("site.yml", "--limit", "hopper-1", "-e",
                                     "model_fetch_repo_id=gpufleet/does-not-exist")
    assert rc != 0
    assert "gpufleet/does-not-exist" in output and "not found" in output.lower(), output[-3000:]
    assert all(r["changed"] == 0 for r in recap.values())
    assert host_exec("hopper-1", "test -e /srv/models/gpufleet--does-not-exist").returncode != 0


def test_host_without_nvidia_smi_fails_in_preflight(first_run):
    host_exec("turing-1", "mv /usr/bin/nvidia-smi /usr/bin/nvidia-smi.away")
    try:
        rc, output, recap = run_playbook("site.yml", "--limit", "turing-1")
    finally:
        host_exec("turing-1", "mv /usr/bin/nvidia-smi.away /usr/bin/nvidia-smi")
    assert rc != 0
    assert "nvidia-smi" in output and "turing-1" in output, output[-3000:]
    assert recap["turing-1"]["changed"] == 0


def test_drifted_host_alone_takes_the_full_run_and_is_repaired(first_run):
    """The fast path (docs/scale.md): a no-op run sends only hosts that differ from their converge stamp
    through the roles. A stopped engine is found, restarted, and the next run is all fast again. (Every host
    was stamped by test_second_run_changes_nothing; the runs between fail in preflight and stamp nothing.)"""
    host_exec("l40s-1", "docker stop gpufleet-engine")
    rc, output, recap = run_playbook("site.yml")
    assert rc == 0, output[-4000:]
    assert "3 of 4 hosts are as their last run left them" in output, output[-4000:]
    assert "l40s-1: container gpufleet-engine is not running" in output
    # converged hosts run the one preflight check (the first host also the once-per-fleet tasks) and no
    # role; the drifted one runs every role
    host_stack = play_section(output, "Host stack")
    assert "l40s-1" in host_stack and not any(h in host_stack for h in LAB_HOSTS if h != "l40s-1"), host_stack
    assert [recap[h]["ok"] for h in LAB_HOSTS[1:] if h != "l40s-1"] == [1, 1]
    assert recap["l40s-1"]["ok"] > 20 and recap["l40s-1"]["changed"] >= 1
    assert host_exec("l40s-1", "docker inspect -f '{{.State.Running}}' gpufleet-engine").stdout.strip() == "true"
    rc, output, recap = run_playbook("site.yml")
    assert rc == 0 and "4 of 4 hosts are as their last run left them" in output, output[-4000:]
    assert all(r["changed"] == 0 for r in recap.values())


def test_changed_runtime_config_is_drift(first_run):
    host_exec("hopper-1", "cp /etc/docker/daemon.json /tmp/daemon.json.bak && "
                          "python3 -c \"import json; p='/etc/docker/daemon.json'; d=json.load(open(p)); "
                          "d.pop('default-runtime', None); d['log-level']='warn'; json.dump(d, open(p, 'w'))\"")
    rc, output, recap = run_playbook("site.yml", "--limit", "hopper-1", "--check")
    assert "hopper-1: file /etc/docker/daemon.json changed" in output, output[-4000:]
    host_exec("hopper-1", "mv /tmp/daemon.json.bak /etc/docker/daemon.json")
    rc, output, recap = run_playbook("site.yml", "--limit", "hopper-1")
    assert rc == 0 and recap["hopper-1"]["changed"] == 0, output[-4000:]
    assert "skipping: no hosts matched" in play_section(output, "Host stack"), output[-4000:]


def test_full_path_on_demand_changes_nothing(first_run):
    """Every task of every role, on one SGLang host, one vLLM host and the gateway: the full path is the same
    code on every host (the first run converged all four GPU generations through it)."""
    hosts = ["turing-1", "hopper-1"]
    rc, output, recap = run_playbook("site.yml", "-e", "preflight_fast_path=false", "--limit", ",".join(hosts + LAB_GATEWAYS))
    assert rc == 0, output[-4000:]
    assert "0 of 2 hosts are as their last run left them" in output, output[-4000:]
    assert sorted(h for h in recap if h != "localhost") == sorted(hosts + LAB_GATEWAYS), recap
    assert all(r["changed"] == 0 for r in recap.values()), recap
    assert all(recap[h]["ok"] > 20 for h in hosts)
