#!/usr/bin/env python3
"""Build the lab's LOCAL, SIGNED stand-in for NVIDIA's apt repositories.

NVIDIA's repositories cannot be reached from here, so the Molecule scenarios (molecule/driver,
molecule/toolkit) install from this instead: packages with NVIDIA's real names, versions and
dependency shape, but STAND-IN CONTENT (no driver, no kernel module, no CUDA; see README.md).
It is signed with a GPG key generated here, so the roles' Signed-By / key handling is exercised.

Output (default .cache/lab/nvidia-repo/www, served over HTTP by the scenarios):
  keys/gpufleet-standin.asc                      the repository key (armored)
  cuda/debian12/x86_64/                          = developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/
  libnvidia-container/stable/deb/amd64/          = nvidia.github.io/libnvidia-container/stable/deb/amd64/
  lab-kernel/                                    linux-headers-<this kernel> stand-in (containers share the
                                                 controller's kernel, which Debian has no headers for)
Each is a flat repository ("deb <url> /") with Packages, Release, InRelease and Release.gpg.
Rebuilt only when this script or the stand-in files change.
"""
import argparse
import fcntl
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
CACHE = os.environ.get("GPUFLEET_CACHE", os.path.join(REPO_ROOT, ".cache"))
STANDIN = os.path.join(HERE, "standin")
FAKE_SMI = os.path.join(REPO_ROOT, "lab", "fake-nvidia-smi", "nvidia-smi")
KEY_UID = "gpufleet lab stand-in repository (NOT NVIDIA) <lab@gpufleet.invalid>"
MAINTAINER = "gpufleet lab <lab@gpufleet.invalid>"
LIBDIR = "/usr/lib/x86_64-linux-gnu"

# Driver versions: two 580 point releases (exact-version pinning), 535 (downgrade target) and 590,
# a newer branch the branch pin must keep the host away from.
DRIVERS = ["535.261.03", "580.82.07", "580.95.05", "590.44.01"]
TOOLKITS = ["1.17.7", "1.17.8"]

# postinst of the stand-in kernel module packages: what DKMS leaves behind after a build, a
# nvidia.ko for the running kernel, here an empty ELF object carrying only the real .modinfo fields
# (version, license) so that modinfo - which the role asks before it reboots - answers like on a
# real host. The lab host's fake nvidia-smi then says "driver not loaded" until the (simulated) reboot.
# (The backslash ending a line of the printf is Python's line continuation: the script gets one line.)
KMOD_POSTINST = """#!/bin/sh
set -e
K=$(uname -r)
D=/lib/modules/$K/updates/dkms
mkdir -p "$D"
T=$(mktemp -d)
printf 'version=%(version)s\\0license=%(license)s\\0description=gpufleet lab stand-in, not a kernel module\\0\
name=nvidia\\0vermagic=%%s SMP mod_unload\\0' "$K" > "$T/modinfo"
as -o "$T/empty.o" /dev/null
objcopy --add-section .modinfo="$T/modinfo" --set-section-flags .modinfo=alloc,readonly "$T/empty.o" "$D/nvidia.ko"
rm -rf "$T"
depmod -a "$K" 2>/dev/null || true
if [ -d /etc/gpufleet-lab ]; then echo not_loaded > /etc/gpufleet-lab/driver-state; fi
"""
KMOD_POSTRM = """#!/bin/sh
set -e
K=$(uname -r)
rm -f "/lib/modules/$K/updates/dkms/nvidia.ko"
depmod -a "$K" 2>/dev/null || true
"""
SERVICE = """[Unit]
Description=%(description)s (gpufleet lab stand-in)

[Service]
ExecStart=%(path)s

[Install]
WantedBy=multi-user.target
"""
DAEMON = "#!/bin/sh\n# gpufleet lab stand-in for %s: not NVIDIA software.\nexec sleep infinity\n"
PLACEHOLDER = "gpufleet lab stand-in for %s %s: not NVIDIA software.\n"
RELOAD_UNITS = "#!/bin/sh\nsystemctl daemon-reload 2>/dev/null || true\n"


def text(content, mode=0o644):
    return {"content": content, "mode": mode}


def driver_packages(version):
    """NVIDIA's Debian CUDA-repository names (debian12) for one driver version."""
    branch = version.split(".")[0]
    deb = version + "-1"
    kmod = {"postinst": KMOD_POSTINST, "postrm": KMOD_POSTRM}
    return [
        {"name": "nvidia-kernel-open-dkms", "version": deb, "section": "contrib/kernel",
         "depends": "dkms, binutils, kmod, firmware-nvidia-gsp (= %s)" % deb,
         "conflicts": "nvidia-kernel-dkms", "provides": "nvidia-kernel-open-%s" % version,
         "scripts": {k: v % {"version": version, "license": "Dual MIT/GPL"} if k == "postinst" else v
                     for k, v in kmod.items()}},
        {"name": "nvidia-kernel-dkms", "version": deb, "section": "non-free/kernel",
         "depends": "dkms, binutils, kmod", "conflicts": "nvidia-kernel-open-dkms",
         "provides": "nvidia-kernel-%s" % version,
         "scripts": {k: v % {"version": version, "license": "NVIDIA"} if k == "postinst" else v
                     for k, v in kmod.items()}},
        {"name": "firmware-nvidia-gsp", "version": deb, "section": "non-free-firmware/kernel",
         "files": {"/lib/firmware/nvidia/%s/STANDIN" % version: text(PLACEHOLDER % ("GSP firmware", version))}},
        {"name": "libcuda1", "version": deb, "section": "non-free/libs",
         "files": {"%s/libcuda.so.%s" % (LIBDIR, version): text(PLACEHOLDER % ("libcuda", version))}},
        {"name": "libnvidia-ml1", "version": deb, "section": "non-free/libs",
         "files": {"%s/libnvidia-ml.so.%s" % (LIBDIR, version): text(PLACEHOLDER % ("NVML", version))}},
        {"name": "nvidia-smi", "version": deb, "section": "non-free/utils",
         "depends": "libnvidia-ml1 (= %s), python3" % deb,
         # The lab's fake nvidia-smi (lab/fake-nvidia-smi), which replays the simulated GPU.
         "files": {"/usr/bin/nvidia-smi": {"source": FAKE_SMI, "mode": 0o755}}},
        {"name": "nvidia-persistenced", "version": deb, "section": "non-free/utils",
         "files": {"/usr/bin/nvidia-persistenced": text(DAEMON % "nvidia-persistenced", 0o755),
                   "/lib/systemd/system/nvidia-persistenced.service": text(SERVICE % {
                       "description": "NVIDIA Persistence Daemon", "path": "/usr/bin/nvidia-persistenced"})},
         "scripts": {"postinst": RELOAD_UNITS}},
        {"name": "nvidia-driver-cuda", "version": deb, "section": "non-free/libs",
         "depends": ("nvidia-smi (= {0}), libcuda1 (= {0}), nvidia-persistenced (= {0}), "
                     "nvidia-kernel-open-dkms (= {0}) | nvidia-kernel-dkms (= {0})").format(deb)},
        {"name": "nvidia-fabricmanager-%s" % branch, "version": deb, "section": "non-free/utils",
         "provides": "nvidia-fabricmanager", "conflicts": "nvidia-fabricmanager",
         "files": {"/usr/bin/nv-fabricmanager": text(DAEMON % "nv-fabricmanager", 0o755),
                   "/lib/systemd/system/nvidia-fabricmanager.service": text(SERVICE % {
                       "description": "NVIDIA fabric manager service", "path": "/usr/bin/nv-fabricmanager"})},
         "scripts": {"postinst": RELOAD_UNITS}},
        {"name": "libnvidia-nscq-%s" % branch, "version": deb, "section": "non-free/libs",
         "provides": "libnvidia-nscq", "conflicts": "libnvidia-nscq",
         "files": {"%s/libnvidia-nscq.so.%s" % (LIBDIR, version): text(PLACEHOLDER % ("NSCQ", version))}},
    ]


def toolkit_packages(version):
    """nvidia-container-toolkit and its libraries, as in NVIDIA's libnvidia-container repository."""
    deb = version + "-1"
    ctk = open(os.path.join(STANDIN, "nvidia-ctk")).read().replace("@VERSION@", version)
    return [
        {"name": "libnvidia-container1", "version": deb, "section": "utils",
         "files": {"%s/libnvidia-container.so.%s" % (LIBDIR, version): text(PLACEHOLDER % ("libnvidia-container", version))}},
        {"name": "libnvidia-container-tools", "version": deb, "section": "utils",
         "depends": "libnvidia-container1 (>= %s)" % deb,
         "files": {"/usr/bin/nvidia-container-cli": text(
             "#!/bin/sh\necho 'cli-version: %s (gpufleet lab stand-in)'\n" % version, 0o755)}},
        {"name": "nvidia-container-toolkit-base", "version": deb, "section": "utils",
         "files": {"/usr/bin/nvidia-ctk": text(ctk, 0o755),
                   # Passes straight to runc: enough for dockerd to run a container with --runtime=nvidia.
                   "/usr/bin/nvidia-container-runtime": text(
                       "#!/bin/sh\n# gpufleet lab stand-in for nvidia-container-runtime: no GPU injection.\n"
                       "exec runc \"$@\"\n", 0o755)}},
        {"name": "nvidia-container-toolkit", "version": deb, "section": "utils",
         "depends": "nvidia-container-toolkit-base (= %s), libnvidia-container-tools (>= %s)" % (deb, deb),
         "files": {"/usr/bin/nvidia-container-runtime-hook": text(
             "#!/bin/sh\n# gpufleet lab stand-in for nvidia-container-runtime-hook.\nexit 0\n", 0o755)}},
    ]


def kernel_packages():
    kernel = os.uname().release
    return [{"name": "linux-headers-%s" % kernel, "version": "0.0-gpufleet1", "section": "kernel",
             "files": {"/usr/src/linux-headers-%s/STANDIN" % kernel: text(PLACEHOLDER % ("kernel headers", kernel))}}]


def build_deb(pkg, out_dir, work):
    root = os.path.join(work, pkg["name"] + "_" + pkg["version"])
    os.makedirs(os.path.join(root, "DEBIAN"))
    for path, spec in pkg.get("files", {}).items():
        dest = root + path
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if "source" in spec:
            shutil.copyfile(spec["source"], dest)
        else:
            with open(dest, "w") as handle:
                handle.write(spec["content"])
        os.chmod(dest, spec["mode"])
    control = ["Package: %s" % pkg["name"], "Version: %s" % pkg["version"], "Architecture: amd64",
               "Maintainer: %s" % MAINTAINER, "Section: %s" % pkg["section"], "Priority: optional"]
    for field in ("depends", "conflicts", "provides"):
        if pkg.get(field):
            control.append("%s: %s" % (field.capitalize(), pkg[field]))
    control.append("Description: gpufleet lab STAND-IN for %s (not NVIDIA software)\n"
                   " Same name, version and dependencies as NVIDIA's package; the content is a placeholder\n"
                   " for testing package management only (lab/nvidia-repo/README.md)." % pkg["name"])
    with open(os.path.join(root, "DEBIAN", "control"), "w") as handle:
        handle.write("\n".join(control) + "\n")
    for script, body in pkg.get("scripts", {}).items():
        path = os.path.join(root, "DEBIAN", script)
        with open(path, "w") as handle:
            handle.write(body)
        os.chmod(path, 0o755)
    deb = os.path.join(out_dir, "%s_%s_amd64.deb" % (pkg["name"], pkg["version"]))
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, deb], check=True,
                   stdout=subprocess.DEVNULL)
    return deb


def packages_entry(deb, out_dir):
    control = subprocess.run(["dpkg-deb", "-f", deb], check=True, stdout=subprocess.PIPE,
                             universal_newlines=True).stdout.rstrip("\n")
    data = open(deb, "rb").read()
    return "%s\nFilename: ./%s\nSize: %d\nMD5sum: %s\nSHA256: %s\n" % (
        control, os.path.relpath(deb, out_dir), len(data), hashlib.md5(data).hexdigest(),
        hashlib.sha256(data).hexdigest())


def gpg(home, *args, **kw):
    return subprocess.run(["gpg", "--homedir", home, "--batch", "--quiet", *args], check=True, **kw)


def sign_flat_repo(out_dir, entries, home, label):
    packages = "\n".join(entries)
    files = {"Packages": packages.encode(), "Packages.gz": gzip.compress(packages.encode(), mtime=0)}
    for name, data in files.items():
        with open(os.path.join(out_dir, name), "wb") as handle:
            handle.write(data)
    lines = ["Origin: gpufleet-lab", "Label: %s (stand-in, NOT NVIDIA)" % label, "Architectures: amd64",
             "Date: %s" % time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime()), "MD5Sum:"]
    lines += [" %s %d %s" % (hashlib.md5(d).hexdigest(), len(d), n) for n, d in files.items()]
    lines.append("SHA256:")
    lines += [" %s %d %s" % (hashlib.sha256(d).hexdigest(), len(d), n) for n, d in files.items()]
    release = os.path.join(out_dir, "Release")
    with open(release, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    gpg(home, "--yes", "--clearsign", "-o", os.path.join(out_dir, "InRelease"), release)
    gpg(home, "--yes", "--armor", "--detach-sign", "-o", os.path.join(out_dir, "Release.gpg"), release)


def ensure_key(home):
    if not os.path.exists(os.path.join(home, "pubring.kbx")):
        os.makedirs(home, mode=0o700, exist_ok=True)
        gpg(home, "--passphrase", "", "--quick-gen-key", KEY_UID, "rsa3072", "sign", "never")
    return gpg(home, "--armor", "--export", KEY_UID, stdout=subprocess.PIPE).stdout


def inputs_hash():
    digest = hashlib.sha256(os.uname().release.encode())
    for path in sorted([os.path.abspath(__file__), FAKE_SMI] +
                       [os.path.join(STANDIN, n) for n in os.listdir(STANDIN)]):
        digest.update(path.encode())
        digest.update(open(path, "rb").read())
    return digest.hexdigest()[:16]


def build(dest):
    # The driver and toolkit Molecule scenarios run in different test lanes at once and both build here
    # first: one builds, the other waits and finds it current.
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(os.path.join(os.path.dirname(dest), "build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _build(dest)


def _build(dest):
    state = os.path.dirname(dest)
    stamp = os.path.join(dest, ".inputs")
    wanted = inputs_hash()
    if os.path.exists(stamp) and open(stamp).read() == wanted:
        print("stand-in NVIDIA repository is current (%s)" % dest)
        return
    if not shutil.which("gpg") or not shutil.which("dpkg-deb"):
        sys.exit("lab/nvidia-repo/build.py needs gpg and dpkg-deb (Debian: apt-get install gnupg dpkg)")
    home = os.path.join(state, "gnupg")
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        key = ensure_key(home)
        os.makedirs(os.path.join(tmp, "keys"))
        with open(os.path.join(tmp, "keys", "gpufleet-standin.asc"), "wb") as handle:
            handle.write(key)
        repos = {
            "cuda/debian12/x86_64": ("CUDA debian12", [p for v in DRIVERS for p in driver_packages(v)]),
            "libnvidia-container/stable/deb/amd64": ("libnvidia-container", [p for v in TOOLKITS for p in toolkit_packages(v)]),
            "lab-kernel": ("lab kernel headers", kernel_packages()),
        }
        with tempfile.TemporaryDirectory() as work:
            for path, (label, pkgs) in repos.items():
                out_dir = os.path.join(tmp, path)
                os.makedirs(out_dir)
                debs = [build_deb(p, out_dir, work) for p in pkgs]
                sign_flat_repo(out_dir, [packages_entry(d, out_dir) for d in debs], home, label)
    finally:
        # gpg started an agent for this home: stop it (it is ours).
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], stderr=subprocess.DEVNULL, check=False)
    with open(os.path.join(tmp, ".inputs"), "w") as handle:
        handle.write(wanted)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    print("built the stand-in NVIDIA repository in %s" % dest)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default=os.path.join(CACHE, "lab", "nvidia-repo", "www"))
    build(parser.parse_args().dest)


if __name__ == "__main__":
    main()
