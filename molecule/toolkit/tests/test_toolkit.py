"""State of the lab host after converge (1.17.7-1), idempotence and the side effects (driver change,
toolkit 1.17.8-1)."""
import json

testinfra_hosts = ["ansible://gpu_hosts"]

TOOLKIT = ["libnvidia-container-tools", "libnvidia-container1", "nvidia-container-toolkit",
           "nvidia-container-toolkit-base"]


def test_daemon_json_keeps_user_keys_and_has_the_nvidia_runtime(host):
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["registry-mirrors"] == ["https://mirror.gpufleet.invalid"]   # the user's
    assert config["storage-driver"] == "overlay2"                              # the user's
    assert config["log-opts"] == {"max-size": "50m", "max-file": "3", "labels": "team"}  # merged, not replaced
    assert config["runtimes"] == {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}  # nvidia-ctk's


def test_toolkit_pinned_and_held(host):
    for name in TOOLKIT:
        assert host.package(name).version == "1.17.8-1", name
    assert sorted(host.check_output("apt-mark showhold").split()) == TOOLKIT
    sources = host.file("/etc/apt/sources.list.d/gpufleet-nvidia-container-toolkit.sources").content_string
    assert "Signed-By: /usr/share/keyrings/gpufleet-nvidia-container-toolkit.asc" in sources


def test_cdi_spec_for_the_loaded_driver(host):
    spec = host.file("/etc/cdi/nvidia.yaml").content_string
    assert "kind: nvidia.com/gpu" in spec and "libcuda.so.580.105.08" in spec
    assert "nvidia.com/gpu=all" in host.check_output("nvidia-ctk cdi list")


def test_docker_running_not_restarted_after_converge(host):
    docker = host.service("docker")
    assert docker.is_running and docker.is_enabled
    assert host.check_output("systemctl show -p InvocationID --value docker") == \
        host.file("/root/docker-invocation-after-converge").content_string.strip()


def test_docker_runs_a_container_with_the_nvidia_runtime(host):
    # dockerd loaded the runtime from daemon.json (the stand-in runtime passes through to runc).
    assert "nvidia" in host.check_output("docker info --format '{{json .Runtimes}}'")
    host.check_output("tar -C / -ch usr/bin/true lib/x86_64-linux-gnu/libc.so.6 lib64/ld-linux-x86-64.so.2"
                      " | docker import - gpufleet-lab/true >/dev/null")
    host.check_output("docker run --rm --runtime=nvidia gpufleet-lab/true /usr/bin/true")
