"""engine_health with a restart policy: a crashing engine is seen as "restarting" (rarely "exited"),
and the wait must stop at once with the engine's last words, not run into the timeout."""
import time

from ansible_collections.gpufleet.serving.plugins.modules import engine_health
from test_engine_health import FakeDocker, params


def test_a_restarting_container_ends_the_wait_with_its_last_log_line():
    docker = FakeDocker(status="restarting", exit_code=1,
                        logs=["loading", "ModuleNotFoundError: No module named 'sglang'", ""])
    started = time.monotonic()
    ok, result, msg = engine_health.probe(params("http://127.0.0.1:9", "sglang", timeout=60.0, interval=0.5), docker)
    assert not ok and time.monotonic() - started < 10
    assert "container engine is restarting (exit code 1)" in msg
    assert msg.endswith("; last log line: ModuleNotFoundError: No module named 'sglang'")
    assert result["diagnosis"]["container"]["status"] == "restarting"


def test_the_last_log_line_is_masked_like_the_rest():
    docker = FakeDocker(status="exited", exit_code=2, logs=["error: --api-key sk-standin-secret rejected"])
    ok, _unused, msg = engine_health.probe(params("http://127.0.0.1:9", "vllm", timeout=60.0, interval=0.5), docker)
    assert not ok and "sk-standin-secret" not in msg and "last log line: error: --api-key ********" in msg
