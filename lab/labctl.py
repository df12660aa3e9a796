#!/usr/bin/env python3
"""Bring the offline lab fleet up or down: `labctl.py up|down|status`.

Everything is built here from Debian's mirror and PyPI (no registry can be reached): a debootstrapped
base image, the lab-host image, the engine stand-in image (a test double), an SSH key, a Docker network,
one container per host, and the local Hugging Face server on the network's gateway address.
`up` is idempotent: what already runs is left alone.
"""
import argparse
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time

import yaml

LAB_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(LAB_DIR)
CACHE = os.environ.get("GPUFLEET_CACHE", os.path.join(REPO_ROOT, ".cache"))
STATE = os.path.join(CACHE, "lab")
SSH_KEY = os.path.join(STATE, "ssh", "id_ed25519")
IMAGES_DIR = os.path.join(STATE, "images")
DEFAULT_FLEET = os.path.join(LAB_DIR, "fleet.yml")
# GPU profile -> inventory group, for the inventories labctl writes for extra fleets.
PROFILE_GROUPS = {"rtx4000": "turing", "rtx5090": "blackwell", "l40s": "l40s", "l40sx2": "l40s",
                  "h100-80gb-hbm3": "hopper", "h100x8": "hopper"}

BASE_IMAGE = "gpufleet/debian-base:bookworm"
HOST_IMAGE = "gpufleet/lab-host:bookworm"
# The stand-in's base image: engine-neutral (either command line, the table's default versions). The lab
# runs it under each engine version's real image name (standin_images), as the planner names them.
STANDIN_IMAGE = "gpufleet/engine-standin:0.1.0"
KNOWLEDGE = os.path.join(REPO_ROOT, "data", "knowledge.yml")
ENGINE_FLAGS = os.path.join(REPO_ROOT, "data", "engine_flags")
# The collection's parser of the flag dumps: the stand-in checks command lines with it, as the planner does.
FLAG_DUMP_PY = os.path.join(REPO_ROOT, "plugins", "module_utils", "flag_dump.py")
STANDIN_ARCHIVE_IN_HOST = "/opt/gpufleet-lab/images/engine-standin.tar"
# The gateway's router, built from its pinned PyPI wheel by the collection's own recipe (roles/gateway).
GATEWAY_IMAGE = "gpufleet/smg:1.13.0"
GATEWAY_IMAGE_DIR = os.path.join(REPO_ROOT, "roles", "gateway", "files", "image")
GATEWAY_ARCHIVE_IN_HOST = "/opt/gpufleet-lab/images/smg.tar"
HF_CLIENT_PIN = "huggingface_hub==2.4.0"

# systemd as PID 1 and a nested dockerd, without --privileged (which fails on this machine kind).
HOST_RUN_OPTIONS = [
    "--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--tmpfs", "/run", "--tmpfs", "/run/lock",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--cgroupns=host",
]


def log(msg):
    print(f"[lab] {msg}", flush=True)


def sh(*cmd, check=True, capture=True, **kw):
    res = subprocess.run(list(cmd), check=False, text=True,
                         stdout=subprocess.PIPE if capture else None,
                         stderr=subprocess.PIPE if capture else None, **kw)
    if check and res.returncode != 0:
        raise SystemExit(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr or ''}")
    return res


def load_fleet(path=DEFAULT_FLEET):
    """A fleet file (lab/fleet.yml is the built-in lab). Extra fleets (tests, benchmarks) name
    themselves, so several can run side by side on their own networks and state dirs."""
    with open(path) as f:
        fleet = yaml.safe_load(f)
    fleet.setdefault("name", "lab")
    fleet.setdefault("prefix", "gpufleet-%s-" % fleet["name"])
    fleet["state"] = STATE if fleet["name"] == "lab" else os.path.join(STATE, "fleets", fleet["name"])
    fleet["hf_state"] = os.path.join(fleet["state"], "hf")
    return fleet


# --- Docker engine ---------------------------------------------------------------------------------

def ensure_docker():
    if sh("docker", "info", check=False).returncode == 0:
        return
    if not shutil.which("dockerd"):
        raise SystemExit("no Docker engine: install it (Debian: apt-get install docker.io) and re-run")
    if os.geteuid() != 0:
        raise SystemExit("the Docker daemon is not running and only root can start it here: "
                         "start dockerd (or the docker service) and re-run")
    os.makedirs(STATE, exist_ok=True)
    log("starting dockerd (its socket was missing)")
    with open(os.path.join(STATE, "dockerd.log"), "ab") as out:
        subprocess.Popen(["dockerd"], stdout=out, stderr=out, start_new_session=True)
    for _unused in range(60):
        if sh("docker", "info", check=False).returncode == 0:
            return
        time.sleep(1)
    raise SystemExit(f"dockerd did not come up; see {STATE}/dockerd.log")


# --- Images ----------------------------------------------------------------------------------------

def tree_hash(*paths):
    """Hash of files under the given paths: an image is rebuilt only when its inputs changed."""
    digest = hashlib.sha256()
    for root in paths:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                digest.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()[:16]


def file_hash(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def image_label(image):
    res = sh("docker", "image", "inspect", "-f", '{{index .Config.Labels "gpufleet.inputs"}}', image, check=False)
    return res.stdout.strip() if res.returncode == 0 else None


def build_image(image, context, inputs_hash):
    if image_label(image) == inputs_hash:
        return False
    log(f"building {image}")
    sh("docker", "build", "-q", "--label", f"gpufleet.inputs={inputs_hash}", "-t", image, context)
    return True


def host_wheels():
    """Wheels of the Hugging Face client for the lab hosts, downloaded on the controller (which
    trusts this site's TLS chain; the containers do not)."""
    wheels = os.path.join(CACHE, "wheels")
    stamp = os.path.join(wheels, ".pin")
    if not (os.path.exists(stamp) and open(stamp).read() == HF_CLIENT_PIN):
        os.makedirs(wheels, exist_ok=True)
        sh(sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", wheels, HF_CLIENT_PIN)
        with open(stamp, "w") as f:
            f.write(HF_CLIENT_PIN)
    return wheels


def save_archive(images, name, inputs):
    """The image(s) as one archive the hosts `docker load`, as an air-gapped site loads a real image."""
    os.makedirs(IMAGES_DIR, exist_ok=True)
    archive = os.path.join(IMAGES_DIR, name)
    stamp = archive + ".inputs"
    if not (os.path.exists(archive) and os.path.exists(stamp) and open(stamp).read() == inputs):
        sh("docker", "save", "-o", archive + ".tmp", *([images] if isinstance(images, str) else images))
        os.replace(archive + ".tmp", archive)
        with open(stamp, "w") as f:
            f.write(inputs)
    return archive


def load_knowledge():
    with open(KNOWLEDGE) as f:
        return yaml.safe_load(f)


def standin_images(knowledge):
    """[(image, engine, version, flag dump)]: every engine version of the knowledge table under its real
    image name (engines.<engine>.<version>.image), so the planner's image for a version is that version's
    stand-in."""
    versions = [("%s:%s" % (entry["image"]["repo"], entry["image"]["tag"]), engine, str(version), entry["flag_dump"])
                for engine, table in sorted(knowledge["engines"].items()) for version, entry in sorted(table.items())]
    images = [v[0] for v in versions]
    if len(set(images)) != len(images):
        raise SystemExit("data/knowledge.yml names one image for two engine versions: %s" % images)
    return versions


def build_version_image(image, engine, version, dump, base_inputs):
    """The stand-in tagged as one engine version's real image: the base's layers and three ENV lines (which
    engine, which version, which flag dump), built in a second from a Dockerfile on stdin."""
    inputs = "%s:%s" % (base_inputs, hashlib.sha256(repr((image, engine, version, dump)).encode()).hexdigest()[:16])
    if image_label(image) == inputs:
        return False
    dockerfile = (
        f"FROM {STANDIN_IMAGE}\n"
        f'LABEL org.opencontainers.image.title="gpufleet engine stand-in as {image} (TEST DOUBLE, not {engine})"\n'
        f"ENV STANDIN_IMAGE_ENGINE={engine} STANDIN_ENGINE_VERSION={version} STANDIN_FLAG_DUMP={dump}\n")
    log(f"tagging the stand-in as {image} ({engine} {version})")
    sh("docker", "build", "-q", "--label", f"gpufleet.inputs={inputs}", "-t", image, "-", input=dockerfile)
    return True


def build_gateway_image(base_id):
    """The router image through roles/gateway/files/image/build.sh on the lab's Debian base; the wheels it
    installs are cached under .cache, so a rebuild does not go back to PyPI."""
    inputs = base_id[:19] + tree_hash(GATEWAY_IMAGE_DIR) + GATEWAY_IMAGE
    if image_label(GATEWAY_IMAGE) != inputs:
        log(f"building {GATEWAY_IMAGE}")
        sh(os.path.join(GATEWAY_IMAGE_DIR, "build.sh"), GATEWAY_IMAGE, BASE_IMAGE,
           env=dict(os.environ, PYTHON=sys.executable, SMG_SITE_CACHE=os.path.join(CACHE, "smg-site"),
                    SMG_VERSION=GATEWAY_IMAGE.rsplit(":", 1)[1], IMAGE_LABEL=f"gpufleet.inputs={inputs}"))
    return save_archive(GATEWAY_IMAGE, "smg.tar", inputs)


def build_images():
    sh(os.path.join(LAB_DIR, "images", "build-base.sh"), capture=False)
    base_id = sh("docker", "image", "inspect", "-f", "{{.Id}}", BASE_IMAGE).stdout.strip()

    host_dir = os.path.join(LAB_DIR, "images", "lab-host")
    wheels = host_wheels()
    ctx = os.path.join(STATE, "build-lab-host")
    shutil.rmtree(ctx, ignore_errors=True)
    shutil.copytree(host_dir, ctx)
    shutil.copytree(wheels, os.path.join(ctx, "wheels"))
    build_image(HOST_IMAGE, ctx, base_id[:19] + tree_hash(host_dir) + HF_CLIENT_PIN)

    standin_dir = os.path.join(LAB_DIR, "engine_standin")
    ctx = os.path.join(STATE, "build-engine-standin")
    shutil.rmtree(ctx, ignore_errors=True)
    shutil.copytree(standin_dir, ctx)
    shutil.copytree(ENGINE_FLAGS, os.path.join(ctx, "engine_flags"), dirs_exist_ok=True)
    shutil.copy(FLAG_DUMP_PY, os.path.join(ctx, "flag_dump.py"))
    inputs = base_id[:19] + tree_hash(standin_dir, ENGINE_FLAGS) + file_hash(FLAG_DUMP_PY)
    build_image(STANDIN_IMAGE, ctx, inputs)
    versions = standin_images(load_knowledge())
    for image, engine, version, dump in versions:
        build_version_image(image, engine, version, dump, inputs)
    inputs += hashlib.sha256(repr(versions).encode()).hexdigest()[:16]

    return {"engine": save_archive([STANDIN_IMAGE] + [v[0] for v in versions], "engine-standin.tar", inputs),
            "gateway": build_gateway_image(base_id)}


# --- Hosts -----------------------------------------------------------------------------------------

def ensure_ssh_key():
    if not os.path.exists(SSH_KEY):
        os.makedirs(os.path.dirname(SSH_KEY), mode=0o700, exist_ok=True)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpufleet-lab", "-f", SSH_KEY)
    with open(SSH_KEY + ".pub") as f:
        return f.read()


def ensure_network(net):
    if sh("docker", "network", "inspect", net["name"], check=False).returncode != 0:
        log(f"creating network {net['name']} {net['subnet']}")
        sh("docker", "network", "create", "--subnet", net["subnet"], "--gateway", net["gateway"], net["name"])


def container_state(name):
    res = sh("docker", "inspect", "-f", "{{.State.Status}}", name, check=False)
    return res.stdout.strip() if res.returncode == 0 else None


def start_host(fleet, name, spec):
    net = fleet["network"]
    cname = fleet["prefix"] + name
    state = container_state(cname)
    if state == "running":
        return False
    if state is not None:
        sh("docker", "start", cname)
        return True
    log(f"starting host {name} ({spec.get('gpu') or spec.get('role')}, {spec['ip']})")
    # A new host starts bare: a Docker volume left by a host removed without `down` would bring back its
    # engine containers (planned by another checkout, another version of the roles).
    sh("docker", "volume", "rm", "-f", f"{cname}-docker", check=False)
    sh("docker", "run", "-d", "--name", cname, "--hostname", name,
       "--network", net["name"], "--ip", spec["ip"],
       "--label", "gpufleet.lab=" + fleet["name"],
       "-v", f"{cname}-docker:/var/lib/docker", *HOST_RUN_OPTIONS, HOST_IMAGE)
    return True


def dexec(cname, script, check=True):
    return sh("docker", "exec", cname, "bash", "-c", script, check=check)


def wait_running(cname, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        res = dexec(cname, "systemctl is-system-running 2>/dev/null; systemctl is-active ssh docker", check=False)
        lines = res.stdout.split()
        if lines[:1] and lines[0] in ("running", "degraded") and lines[1:] == ["active", "active"]:
            return
        time.sleep(1)
    raise SystemExit(f"{cname}: systemd/sshd/docker did not come up in {timeout}s:\n{res.stdout}")


def copy_if_changed(src, cname, dest, mode="0644"):
    """docker cp only when the content differs, so a re-run of `up` is cheap."""
    want = hashlib.sha256(open(src, "rb").read()).hexdigest()
    have = dexec(cname, f"sha256sum {dest} 2>/dev/null | cut -d' ' -f1", check=False).stdout.strip()
    if have != want:
        dexec(cname, f"mkdir -p {os.path.dirname(dest)}")
        sh("docker", "cp", src, f"{cname}:{dest}")
        dexec(cname, f"chmod {mode} {dest}")


def is_gateway(spec):
    return spec.get("role") == "gateway"


def provision_host(fleet, name, spec, pubkey, archives):
    """What a real host would already have: our key, a GPU (here simulated), and the engine image archive;
    a gateway host (role: gateway) has no GPU and the router's image archive instead."""
    cname = fleet["prefix"] + name
    wait_running(cname)
    dexec(cname, f"grep -qxF '{pubkey.strip()}' /root/.ssh/authorized_keys 2>/dev/null || "
                 f"echo '{pubkey.strip()}' >> /root/.ssh/authorized_keys; chmod 600 /root/.ssh/authorized_keys")
    if is_gateway(spec):
        copy_if_changed(archives["gateway"], cname, GATEWAY_ARCHIVE_IN_HOST)
        return
    # The GPU captures and the fake nvidia-smi are copied, not bind-mounted, so a test can take the GPU
    # away (rm /usr/bin/nvidia-smi) the way a host without a driver looks.
    gpus_tar = os.path.join(STATE, "gpus.tar")  # shared by every fleet
    sh("tar", "-C", os.path.join(LAB_DIR, "gpus"), "-cf", gpus_tar, ".")
    copy_if_changed(gpus_tar, cname, "/usr/share/gpufleet-lab/gpus.tar")
    dexec(cname, "mkdir -p /usr/share/gpufleet-lab/gpus && tar -C /usr/share/gpufleet-lab/gpus -xf /usr/share/gpufleet-lab/gpus.tar")
    copy_if_changed(os.path.join(LAB_DIR, "fake-nvidia-smi", "nvidia-smi"), cname, "/usr/bin/nvidia-smi", "0755")
    dexec(cname, f"mkdir -p /etc/gpufleet-lab && echo {spec['gpu']} > /etc/gpufleet-lab/gpu")
    copy_if_changed(archives["engine"], cname, STANDIN_ARCHIVE_IN_HOST)


def wait_ssh(ip, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((ip, 22), timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"no SSH on {ip}:22 after {timeout}s")


# --- Local Hugging Face server -----------------------------------------------------------------------

def hf_server_running(host, port):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def hf_servers(host, port):
    """{pid: --root} of the lab HF servers on host:port (any checkout's)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a.endswith("hf/serve.py") for a in argv) and "--port" in argv and "--root" in argv:
            if argv[argv.index("--port") + 1] == str(port) and argv[argv.index("--host") + 1] == host:
                found[int(pid)] = argv[argv.index("--root") + 1]
    return found


def ensure_hf_server(fleet):
    host, port, hf_state = fleet["network"]["gateway"], fleet["hf_server"]["port"], fleet["hf_state"]
    os.makedirs(hf_state, exist_ok=True)
    pidfile = os.path.join(hf_state, "server.pid")
    ours = open(pidfile).read().strip() if os.path.exists(pidfile) else None
    for pid, root in hf_servers(host, port).items():
        if os.path.realpath(root) == os.path.realpath(hf_state) and str(pid) == ours:
            continue
        # Left by a deleted checkout, or by one deleted and cloned again at the same path (its state dir
        # is new, without this server's pid): it would answer 404 for every repo.
        if not os.path.isdir(root) or os.path.realpath(root) == os.path.realpath(hf_state):
            log(f"stopping a stale Hugging Face server on {host}:{port} (its {root} is gone or rebuilt)")
            os.kill(pid, 15)
            for _unused in range(50):
                if not hf_server_running(host, port):
                    break
                time.sleep(0.1)
        else:
            raise SystemExit(f"{host}:{port} is served by the lab of another checkout ({root}): "
                             f"run `labctl.py down` there first")
    if hf_server_running(host, port):
        return
    sh(sys.executable, os.path.join(LAB_DIR, "hf", "build_repos.py"), "--root", hf_state)
    token_file = os.path.join(hf_state, "gated-token")
    if not os.path.exists(token_file):
        # The token the lab's gated repo accepts; tests read it from here, nothing prints it.
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, ("hf_lab_" + secrets.token_hex(16) + "\n").encode())
        os.close(fd)
    log(f"starting the local Hugging Face server on {host}:{port}")
    with open(os.path.join(hf_state, "server.log"), "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, os.path.join(LAB_DIR, "hf", "serve.py"), "--root", hf_state,
             "--host", host, "--port", str(port), "--access-log", os.path.join(hf_state, "access.log"),
             "--gated-token-file", token_file],
            stdout=out, stderr=out, start_new_session=True)
    with open(os.path.join(hf_state, "server.pid"), "w") as f:
        f.write(str(proc.pid))
    for _unused in range(50):
        if hf_server_running(host, port):
            return
        time.sleep(0.2)
    raise SystemExit(f"the Hugging Face server did not start; see {hf_state}/server.log")


def stop_hf_server(fleet):
    pidfile = os.path.join(fleet["hf_state"], "server.pid")
    if os.path.exists(pidfile):
        try:
            os.kill(int(open(pidfile).read()), 15)
        except (ProcessLookupError, ValueError):
            pass
        os.remove(pidfile)


# --- Commands --------------------------------------------------------------------------------------

def write_inventory(fleet):
    """An inventory for an extra fleet, reusing the lab's group_vars; host vars carry what differs."""
    inv_dir = os.path.join(fleet["state"], "inventory")
    os.makedirs(inv_dir, exist_ok=True)
    link = os.path.join(inv_dir, "group_vars")
    if not os.path.islink(link):
        os.symlink(os.path.join(REPO_ROOT, "inventories", "lab", "group_vars"), link)
    endpoint = "http://%s:%s" % (fleet["network"]["gateway"], fleet["hf_server"]["port"])
    groups, gateways = {}, {}
    for name, spec in fleet["hosts"].items():
        if is_gateway(spec):
            gateways[name] = {"ansible_host": spec["ip"], "ansible_ssh_private_key_file": SSH_KEY}
            continue
        group = spec.get("group") or PROFILE_GROUPS[spec["gpu"]]
        groups.setdefault(group, {"hosts": {}})["hosts"][name] = {
            "ansible_host": spec["ip"], "ansible_ssh_private_key_file": SSH_KEY,
            "model_fetch_hf_endpoint": endpoint}
    children = {"gpu_hosts": {"children": groups}}
    if gateways:
        children["gateways"] = {"hosts": gateways}
    with open(os.path.join(inv_dir, "hosts.yml"), "w") as f:
        yaml.safe_dump({"all": {"children": children}}, f, sort_keys=False)
    return inv_dir


def cmd_up(args):
    started = time.time()
    fleet = load_fleet(args.fleet)
    ensure_docker()
    archives = build_images()
    pubkey = ensure_ssh_key()
    net = fleet["network"]
    ensure_network(net)
    hosts = fleet["hosts"]
    for name, spec in hosts.items():
        start_host(fleet, name, spec)
    for name, spec in hosts.items():
        provision_host(fleet, name, spec, pubkey, archives)
    for spec in hosts.values():
        wait_ssh(spec["ip"])
    ensure_hf_server(fleet)
    inventory = "inventories/lab" if fleet["name"] == "lab" else write_inventory(fleet)
    log(f"{fleet['name']} is up: {len(hosts)} hosts, HF server http://{net['gateway']}:{fleet['hf_server']['port']}, "
        f"inventory {inventory} ({time.time() - started:.0f}s)")


def cmd_down(args):
    fleet = load_fleet(args.fleet)
    stop_hf_server(fleet)
    names = sh("docker", "ps", "-aq", "--filter", "label=gpufleet.lab=" + fleet["name"], check=False).stdout.split()
    if names:
        sh("docker", "rm", "-f", *names)
    vols = sh("docker", "volume", "ls", "-q", "--filter", "name=" + fleet["prefix"], check=False).stdout.split()
    if vols:
        sh("docker", "volume", "rm", "-f", *vols)
    sh("docker", "network", "rm", fleet["network"]["name"], check=False)
    log(f"{fleet['name']} is down (images and caches kept)")


def cmd_status(args):
    fleet = load_fleet(args.fleet)
    for name in fleet["hosts"]:
        print(f"{name:14} {container_state(fleet['prefix'] + name) or 'absent'}")
    running = hf_server_running(fleet["network"]["gateway"], fleet["hf_server"]["port"])
    print(f"{'hf-server':14} {'running' if running else 'stopped'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--fleet", default=DEFAULT_FLEET, help="fleet file (default: the built-in lab, lab/fleet.yml)")
    args = parser.parse_args()
    {"up": cmd_up, "down": cmd_down, "status": cmd_status}[args.command](args)


if __name__ == "__main__":
    main()
