"""Issue 12 on the built-in lab: the real smg router on gateway-1 in front of the four engines of tiny-qwen2
(two SGLang, two vLLM), and rollouts that drain each host through it while a steady stream of chat
completions goes through the gateway.

The tests share the lab (no fleet of their own) and run in file order; each leaves every host serving and
converged, on the image it had (its engine version's image from the knowledge table, which lab/labctl.py
tags the stand-in as), as the other lab tests expect.
"""
import json
import re
import subprocess
import time

import pytest
from lab import LAB_HOSTS, REPO_ROOT, VENV_BIN, host_exec, run_losing_host_at_pause, run_playbook

from ansible_collections.gpufleet.serving.plugins.module_utils import gateway_api, loadgen

pytestmark = pytest.mark.lab

GATEWAY = "http://172.28.10.20:30080"
MODEL = "tiny-qwen2"
LAB_IMAGES = {}  # host -> the image the lab runs there (the table's, for its engine version): set by `converged`
CANARY = "turing-1"  # first in inventory order
RATE = 10  # requests per second through the gateway, streamed
NO_ARCHIVE = '{"engine_image_archive": null}'


def router_workers():
    return dict((w["url"], w["status"]) for w in gateway_api.Router(GATEWAY, timeout=10).workers())


def engine_image(host):
    res = host_exec(host, "docker inspect -f '{{.Config.Image}} {{.Id}}' gpufleet-engine")
    return tuple(res.stdout.split()) if res.returncode == 0 else None


def tag_everywhere(tag):
    for host in LAB_HOSTS:
        assert host_exec(host, "docker tag %s %s" % (LAB_IMAGES[host], tag)).returncode == 0


def steady_load():
    send = loadgen.chat_sender(GATEWAY, MODEL, "Say hello", 16, timeout=60)
    return loadgen.SteadyLoad(send, RATE).start()


def run_under_load(*args):
    """site.yml with the load running from before the run to after it; returns rc, output, recap, samples."""
    load = steady_load()
    time.sleep(2)
    rc, output, recap = run_playbook("site.yml", *args)
    time.sleep(2)
    return rc, output, recap, load.stop()


def hosts_that_ran(output, task):
    """The hosts with an ok/changed line under any run of `task` (one per batch)."""
    hosts = set()
    for section in output.split("TASK [")[1:]:
        if section.startswith(task):
            hosts |= set(re.findall(r"^(?:ok|changed): \[([^\]\s]+)", section, re.M))
    return hosts


def all_ready():
    try:
        workers = router_workers()
    except gateway_api.GatewayError:
        return False
    return len(workers) == 4 and set(workers.values()) == {"ready"}


def assert_all_ready():
    workers = router_workers()
    assert len(workers) == 4 and set(workers.values()) == {"ready"}, workers


@pytest.fixture(scope="module")
def converged(lab):
    rc, output, _unused = run_playbook("site.yml")
    assert rc == 0, output[-4000:]
    assert_all_ready()
    LAB_IMAGES.update((h, engine_image(h)[0]) for h in LAB_HOSTS)
    yield
    # Whatever a failed test left: every host back on the lab's image, serving, converged. (The tests leave
    # it so when they pass; test_site_lab's first run, next in lane B, checks the rest.)
    if any((engine_image(h) or ("",))[0] != LAB_IMAGES[h] for h in LAB_HOSTS) or not all_ready():
        rc, output, _unused = run_playbook("site.yml")
        assert rc == 0, output[-4000:]


def test_the_gateway_serves_the_model_from_all_four_engines(converged):
    load = steady_load()
    time.sleep(4)
    stats = loadgen.window_stats(load.stop())
    assert stats["sent"] >= 30 and stats["failed"] == 0, stats
    # Both engines answer behind the one endpoint: the workers the router found are SGLang and vLLM.
    listed = json.loads(subprocess.run(["curl", "-s", GATEWAY + "/workers"], capture_output=True, text=True, check=False).stdout)
    assert sorted(w["runtime_type"] for w in listed["workers"]) == ["sglang", "sglang", "vllm", "vllm"]
    # Router metrics are up where file_sd says.
    targets = json.load(open(REPO_ROOT + "/.cache/prometheus/gpufleet.json"))
    gateway_targets = [t for t in targets if t["labels"]["exporter"] == "gateway"]
    assert gateway_targets == [{"targets": ["172.28.10.20:29000"], "labels": {
        "host": "gateway-1", "model": MODEL, "container": "gpufleet-gateway", "exporter": "gateway"}}]
    metrics = subprocess.run(["curl", "-s", "http://172.28.10.20:29000/metrics"], capture_output=True, text=True, check=False)
    assert "smg_" in metrics.stdout


def test_a_full_rollout_through_the_gateway_drops_no_request(converged):
    """Every engine is replaced (a new image tag), one host per batch after the canary: each is drained in
    the router, waited for, swapped, proven healthy and put back; the clients of the gateway see no error."""
    tag_everywhere("gpufleet/engine-standin:0.1.1")
    before = {h: engine_image(h) for h in LAB_HOSTS}
    # After the canary, one batch of three: three hosts drained at once while the fourth serves alone.
    rc, output, recap, samples = run_under_load("-e", "engine_image=gpufleet/engine-standin:0.1.1", "-e", NO_ARCHIVE,
                                                "-e", "rollout_batch_size=3")
    assert rc == 0, output[-4000:]
    stats = loadgen.window_stats(samples)
    assert stats["sent"] > 100 and stats["failed"] == 0, stats
    for host in LAB_HOSTS:
        assert engine_image(host)[0] == "gpufleet/engine-standin:0.1.1" and engine_image(host) != before[host]
        assert "TASK [gpufleet.serving.engine : The gateways send no new request to this host's engines" in output
        assert "changed: [%s -> gateway-1" % host in output  # drained, then joined, through the gateway
    assert hosts_that_ran(output, "gpufleet.serving.engine : The requests they already hold end") == set(LAB_HOSTS)
    assert_all_ready()
    summary = output[output.rindex("TASK [Gateway summary]"):]
    assert "gateway-1" in summary and "4/4" in summary and "healthy" in summary


def test_a_failed_canary_is_drained_rolled_back_and_back_in_rotation(converged):
    made = host_exec(CANARY, "docker create --name mk %s >/dev/null && docker commit --change "
                             "'ENV PYTHONPATH=/opt/engine-missing' mk gpufleet/engine-standin:0.2.0 && docker rm mk" % LAB_IMAGES[CANARY])
    assert made.returncode == 0, made.stderr
    before = {h: engine_image(h) for h in LAB_HOSTS}
    rc, output, recap, samples = run_under_load("-e", "engine_image=gpufleet/engine-standin:0.2.0", "-e", NO_ARCHIVE)
    assert rc != 0
    stats = loadgen.window_stats(samples)
    assert stats["sent"] > 30 and stats["failed"] == 0, stats
    assert recap[CANARY]["failed"] == 1
    assert "ROLLED-BACK" in output and "rolled back to the previous container (gpufleet-engine: %s), now healthy" % before[CANARY][0] in output
    assert {h: engine_image(h) for h in LAB_HOSTS} == before  # the canary runs its old image again, nothing else moved
    assert "TASK [gpufleet.serving.engine : The gateways route to this host's engines" in output
    assert_all_ready()  # the canary is back in rotation


def test_a_host_lost_mid_rollout_leaves_the_rest_serving(converged):
    """Back to the lab's image (the hosts run 0.1.1 since the full rollout above), with a pause after the
    canary; during it, a host of the next batch (two hosts) stops answering SSH. The rollout goes on without
    it (rollout_max_fail_percentage: the gate counts unreachable hosts too) and the gateway keeps serving from every engine that runs; the next
    test's run repairs the lost host. (A batch whose every host is lost ends the whole playbook in Ansible:
    issue 16.)"""
    lost = "blackwell-1"  # second in inventory order: in the first batch after the canary
    before = engine_image(lost)
    assert before[0] != LAB_IMAGES[lost]
    cmd = [VENV_BIN + "/ansible-playbook", "site.yml", "-i", "inventories/lab",
           "-e", NO_ARCHIVE, "-e", "rollout_max_fail_percentage=50", "-e", "rollout_pause_between_batches=true",
           "-e", "rollout_pause_seconds=3", "-e", "rollout_batch_size=2"]
    load = steady_load()
    rc, output, blocked = run_losing_host_at_pause(cmd, "gpufleet-lab-" + lost)
    stats = loadgen.window_stats(load.stop())
    assert blocked is not None and blocked.returncode == 0, output[-3000:]
    # 1 of 2 hosts of the batch lost is not more than 50 %: the rollout goes on, and the run still fails.
    assert rc != 0 and "Rollout stopped" not in output, output[-4000:]
    assert stats["failed"] == 0, stats
    assert engine_image(lost) == before, output[-4000:]  # never reached
    for host in LAB_HOSTS:
        if host != lost:
            assert engine_image(host)[0] == LAB_IMAGES[host], output[-4000:]
    assert_all_ready()  # the lost host's engine still runs and still serves through the gateway


def test_a_batch_that_would_empty_the_model_is_refused_before_any_change(converged):
    before = {h: engine_image(h) for h in LAB_HOSTS}
    rc, output, recap = run_playbook("playbooks/rollout.yml", "-e", "engine_image=gpufleet/engine-standin:0.1.1",
                                     "-e", NO_ARCHIVE, "-e", "rollout_canary_hosts=4")
    assert rc != 0
    assert "would leave 0 of 4 ready worker host(s)" in output and "-e rollout_batch_size=3" in output, output[-3000:]
    assert {h: engine_image(h) for h in LAB_HOSTS} == before


def test_the_next_run_repairs_the_lost_host_and_the_worker_list(converged):
    """The host lost above is rolled out by the next run. Then a router restarted between runs starts with
    the last run's list; a worker it lost is added back by the next run's sync (every GPU host on the fast
    path)."""
    rc, output, recap = run_playbook("site.yml")
    assert rc == 0, output[-4000:]
    assert all(engine_image(h)[0] == LAB_IMAGES[h] for h in LAB_HOSTS)
    assert_all_ready()

    assert host_exec("gateway-1", "docker restart gpufleet-gateway").returncode == 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if len(router_workers()) == 4:
                break
        except gateway_api.GatewayError:
            pass
        time.sleep(1)
    assert_all_ready()
    worker = [w for w in gateway_api.Router(GATEWAY).workers() if w["url"].startswith("http://172.28.10.13")][0]
    gateway_api.Router(GATEWAY).remove(worker["id"])
    rc, output, recap = run_playbook("site.yml")
    assert rc == 0, output[-4000:]
    assert "4 of 4 hosts are as their last run left them" in output
    assert recap["gateway-1"]["changed"] == 1, recap  # the worker added back by the sync
    assert_all_ready()  # (that the run after it changes nothing is test_site_lab's test_second_run_changes_nothing)


def test_an_unreachable_gateway_stops_the_run_before_any_host_changes(converged):
    before = {h: engine_image(h) for h in LAB_HOSTS}
    block = "iptables -%s INPUT -p tcp --dport 22 -j REJECT --reject-with tcp-reset"
    assert host_exec("gateway-1", block % "I").returncode == 0
    try:
        rc, output, recap = run_playbook("site.yml", "-e", "engine_image=gpufleet/engine-standin:0.1.1",
                                         "-e", NO_ARCHIVE)
    finally:
        host_exec("gateway-1", block % "D")
    assert rc != 0 and "fatal: [gateway-1]: UNREACHABLE!" in output and "172.28.10.20" in output, output[-3000:]
    assert "PLAY [Preflight" not in output, "the run went past the gateway play"
    assert set(recap) == {"gateway-1"}, recap
    assert {h: engine_image(h) for h in LAB_HOSTS} == before


def test_a_router_that_does_not_answer_stops_the_rollout_before_its_batch(converged):
    """playbooks/rollout.yml alone (no gateway play before it): the batch's guard asks the router first."""
    before = {h: engine_image(h) for h in LAB_HOSTS}
    assert host_exec("gateway-1", "docker stop gpufleet-gateway").returncode == 0
    try:
        rc, output, recap = run_playbook("playbooks/rollout.yml", "-e", "engine_image=gpufleet/engine-standin:0.1.1",
                                         "-e", NO_ARCHIVE)
    finally:
        host_exec("gateway-1", "docker start gpufleet-gateway")
    assert rc != 0
    assert "gateway: GET http://127.0.0.1:30080/workers: no answer within 10 s" in output, output[-3000:]
    assert {h: engine_image(h) for h in LAB_HOSTS} == before
