"""Real state on the converged host: files, units, the engine container and its HTTP answers."""
import json

MODEL_DIR = "/srv/models/gpufleet--tiny-qwen2"


def test_docker_running_and_daemon_json_merged(host):
    assert host.service("docker").is_running
    assert host.service("docker").is_enabled
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["storage-driver"] == "overlay2", "a key set before the role was dropped"
    assert config["log-opts"]["max-size"] == "50m"


def test_model_snapshot_pinned_and_complete(host):
    # The engine mounts its commit's own dir under the model's home (docs/model_fetch.md).
    inspect = json.loads(host.check_output("docker inspect gpufleet-engine"))[0]
    snapshot = next(m["Source"] for m in inspect["Mounts"] if m["Destination"] == "/models/model")
    manifest = json.loads(host.file(f"{snapshot}/.gpufleet-snapshot.json").content_string)
    assert manifest["repo_id"] == "gpufleet/tiny-qwen2"
    assert len(manifest["commit_sha"]) == 40 and snapshot == f"{MODEL_DIR}/snapshots/{manifest['commit_sha']}"
    assert host.file(f"{snapshot}/config.json").exists
    weights = host.file(f"{snapshot}/model.safetensors")
    assert weights.exists and weights.size > 1_000_000


def test_engine_container_runs_the_plan(host):
    inspect = json.loads(host.check_output("docker inspect gpufleet-engine"))[0]
    assert inspect["State"]["Running"]
    args = inspect["Config"]["Cmd"]
    assert args[args.index("--attention-backend") + 1] == "fa3"  # H100: SGLang's FA3
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert "--enable-metrics" in args
    assert inspect["Config"]["Labels"]["gpufleet.plan_hash"]
    assert any(m["Destination"] == "/models/model" and not m["RW"] for m in inspect["Mounts"])
    assert "HF_HUB_OFFLINE=1" in inspect["Config"]["Env"]


def test_engine_http_api(host):
    models = json.loads(host.check_output("curl -sf http://127.0.0.1:30000/v1/models"))
    assert [m["id"] for m in models["data"]] == ["tiny-qwen2"]
    body = json.dumps({"model": "tiny-qwen2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    reply = json.loads(host.check_output(
        f"curl -sf -H 'Content-Type: application/json' -d '{body}' http://127.0.0.1:30000/v1/chat/completions"))
    assert reply["choices"][0]["message"]["content"]
    assert "sglang:" in host.check_output("curl -sf http://127.0.0.1:30000/metrics")
