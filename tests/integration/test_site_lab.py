"""site.yml end to end on the lab fleet: every host healthy, a second run changes nothing, and bad
input stops the run in preflight before any host changes."""
import json

import pytest
from lab import LAB_HOSTS, host_exec, run_playbook

pytestmark = pytest.mark.lab


def engine_started_at(host):
    res = host_exec(host, "docker inspect -f '{{.State.StartedAt}}' gpufleet-engine")
    return res.stdout.strip() if res.returncode == 0 else None


@pytest.fixture(scope="module")
def first_run(lab):
    return run_playbook("site.yml")


def test_site_converges_every_host_healthy(first_run):
    rc, output, recap = first_run
    assert rc == 0, output[-4000:]
    assert sorted(h for h in recap if h != "localhost") == sorted(LAB_HOSTS)
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in recap.values()), recap
    summary = output[output.index("TASK [Fleet summary]"):]
    for host in LAB_HOSTS:
        line = next(line for line in summary.splitlines() if line.strip(" -\"'").startswith(host))
        assert "healthy" in line and "FAILED" not in line, line


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
