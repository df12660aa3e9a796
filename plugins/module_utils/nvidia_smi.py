# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""Turn nvidia-smi output into the ``gpufleet_gpu`` facts of docs/CONTRACTS.md.

Plain Python with no Ansible import: the gpu_facts module and tests/fixtures/real_h100/collect.py
both use it, each injecting how a command is run (``run(argv) -> (rc, stdout, stderr)``).
Malformed output raises ValueError naming what was wrong; failures the tool reports itself
(no driver, driver not loaded, no GPU) become states, not exceptions.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import csv
import re

QUERY_FIELDS = (
    "index", "uuid", "name", "memory.total", "compute_cap", "pci.bus_id", "mig.mode.current", "driver_version",
)
QUERY_ARGS = ["--query-gpu=" + ",".join(QUERY_FIELDS), "--format=csv,noheader,nounits"]
PROC_VERSION_PATH = "/proc/driver/nvidia/version"

HEALTHY, NO_DRIVER, DRIVER_NOT_LOADED, NO_GPU = "healthy", "no_driver", "driver_not_loaded", "no_gpu"

# nvidia-smi's documented exit codes for the failures it names itself.
RC_NO_GPU, RC_DRIVER_NOT_LOADED, RC_NVML_MISSING = 6, 9, 12

_CC_RE = re.compile(r"^(\d+)\.(\d+)$")
_BUS_ID_RE = re.compile(r"^[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]$")
_DRIVER_RE = re.compile(r"^\d+\.\d+(\.\d+)?$")
_HEADER_RE = re.compile(r"NVIDIA-SMI\s+(\S+)\s+Driver Version:\s+(\S+)\s+CUDA Version:\s+(\S+)")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")  # topo -m underlines its header row
_NVLINK_RE = re.compile(r"^NV\d+$")


# MIG (docs/planning.md "MIG"): only GPUs whose mig.mode.current is Enabled or Disabled support it.
MIG_MODES = ("Enabled", "Disabled")
MIG_PENDING_ARGS = ["--query-gpu=index,mig.mode.current,mig.mode.pending", "--format=csv,noheader"]
# `nvidia-smi -L`: a GPU line, then one indented line per MIG device of that GPU (MIG user guide,
# "Getting Started with MIG"); R450 drivers spelled the UUID MIG-GPU-<uuid>/<gi>/<ci>.
_L_GPU_RE = re.compile(r"^GPU (\d+): (.*) \(UUID: (GPU-[^)]+)\)\s*$")
_L_MIG_RE = re.compile(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: (MIG-[^)]+)\)\s*$")
# First row of a device in the "MIG devices:" table of plain `nvidia-smi`:
# |  0    2   0   0  |              37MiB / 40320MiB  | 60      0 |  3   0    3    0    3 |
_TABLE_MIG_RE = re.compile(r"^\|\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\|\s+(?:\d+MiB|N/A)\s*/\s*(\d+)MiB\s*\|\s*(\d+)\s")
# `nvidia-smi mig -lgi`:  |   0  MIG 3g.40gb            9        2          4:4     |
_LGI_RE = re.compile(r"^\|\s+(\d+)\s+MIG\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+:\d+)\s*\|")
_SLICES_RE = re.compile(r"^(?:(\d+)c\.)?(\d+)g\.")


class NvidiaSmiError(Exception):
    """nvidia-smi failed in a way that is none of the known host states."""


def cc_tuple(cc):
    match = _CC_RE.match(cc or "")
    if not match:
        raise ValueError("compute capability %r is not MAJOR.MINOR" % (cc,))
    return int(match.group(1)), int(match.group(2))


def architecture(cc):
    """Architecture family of a compute capability ("unknown" for CCs this table predates)."""
    major, minor = cc_tuple(cc)
    if major == 7:
        return "turing" if minor >= 5 else "volta"
    if major == 8:
        return "ada" if minor == 9 else "ampere"
    if major == 9:
        return "hopper"
    if major in (10, 11, 12):
        return "blackwell"
    return "unknown"


def _na(value):
    # Unsupported values print as "[N/A]" in CSV output; the contract keeps the bare word.
    return value[1:-1] if value.startswith("[") and value.endswith("]") else value


def parse_query_gpu(text):
    """Parse ``--query-gpu=<QUERY_FIELDS> --format=csv,noheader,nounits`` into GPU dicts."""
    gpus = []
    for lineno, row in enumerate(csv.reader(text.strip().splitlines(), skipinitialspace=True), 1):
        if len(row) != len(QUERY_FIELDS):
            raise ValueError(
                "nvidia-smi --query-gpu line %d has %d fields, expected %d (%s): %r"
                % (lineno, len(row), len(QUERY_FIELDS), ",".join(QUERY_FIELDS), ", ".join(row))
            )
        values = dict(zip(QUERY_FIELDS, (v.strip() for v in row)))

        def bad(field, why):
            return ValueError("nvidia-smi --query-gpu line %d: %s %r %s" % (lineno, field, values[field], why))

        if not values["index"].isdigit():
            raise bad("index", "is not a GPU index")
        if not values["uuid"].startswith("GPU-"):
            raise bad("uuid", "is not a GPU UUID")
        if not values["name"]:
            raise bad("name", "is empty")
        if not values["memory.total"].isdigit():
            raise bad("memory.total", "is not a whole number of MiB (was --format missing nounits?)")
        if not _CC_RE.match(values["compute_cap"]):
            raise bad("compute_cap", "is not MAJOR.MINOR")
        if not _BUS_ID_RE.match(values["pci.bus_id"]):
            raise bad("pci.bus_id", "is not a PCI bus id")
        if not _DRIVER_RE.match(values["driver_version"]):
            raise bad("driver_version", "is not a driver version")
        gpus.append({
            "index": int(values["index"]),
            "uuid": values["uuid"],
            "name": values["name"],
            "memory_mib": int(values["memory.total"]),
            "compute_capability": values["compute_cap"],
            "pci_bus_id": values["pci.bus_id"],
            "mig_mode": _na(values["mig.mode.current"]),
            "driver_version": values["driver_version"],
        })
    return gpus


def _cuda(value):
    # A driver without its CUDA library prints "N/A" (table) or "Not Found" (--version).
    return value if _CC_RE.match(value) else None


def parse_version(text):
    """Parse ``nvidia-smi --version`` into {driver_version, cuda_version}."""
    pairs = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            pairs[key.strip().lower()] = value.strip()
    if "driver version" not in pairs or "cuda version" not in pairs:
        raise ValueError("nvidia-smi --version printed no 'DRIVER version' / 'CUDA Version' lines: %r" % text[:200])
    return {"driver_version": pairs["driver version"], "cuda_version": _cuda(pairs["cuda version"])}


def parse_header(text):
    """Parse the banner of plain ``nvidia-smi`` into {driver_version, cuda_version}."""
    match = _HEADER_RE.search(text)
    if not match:
        raise ValueError("nvidia-smi printed no 'Driver Version: ... CUDA Version: ...' banner: %r" % text[:200])
    return {"driver_version": match.group(2), "cuda_version": _cuda(match.group(3))}


def parse_topo_nvlink(text):
    """True when any GPU-to-GPU cell of ``nvidia-smi topo -m`` is an NV# link."""
    lines = [_ANSI_RE.sub("", line) for line in text.splitlines()]
    header = next((line.split("\t") for line in lines if "\tGPU0" in line), None)
    if header is None:
        raise ValueError("nvidia-smi topo -m printed no GPU0 column header: %r" % text[:200])
    gpu_columns = [i for i, name in enumerate(header) if re.match(r"^GPU\d+$", name.strip())]
    rows = [line.split("\t") for line in lines if re.match(r"^GPU\d+\t", line)]
    if not rows:
        raise ValueError("nvidia-smi topo -m printed no GPU rows: %r" % text[:200])
    # Only matrix cells count: the legend below the matrix spells "NV#" too.
    return any(_NVLINK_RE.match(row[i].strip()) for row in rows for i in gpu_columns if i < len(row))


def parse_mig_pending(text):
    """{GPU index: (current, pending)} from ``MIG_PENDING_ARGS``; pending is the mode after a GPU reset."""
    modes = {}
    for lineno, row in enumerate(csv.reader(text.strip().splitlines(), skipinitialspace=True), 1):
        if len(row) != 3 or not row[0].strip().isdigit():
            raise ValueError("nvidia-smi --query-gpu=index,mig.mode.current,mig.mode.pending line %d is not "
                             "'index, current, pending': %r" % (lineno, ", ".join(row)))
        modes[int(row[0])] = (_na(row[1].strip()), _na(row[2].strip()))
    return modes


def parse_list_mig(text):
    """``nvidia-smi -L`` -> [{gpu, device, profile, uuid}], one per MIG device, in listing order."""
    devices, gpu = [], None
    for line in text.splitlines():
        gpu_match, mig_match = _L_GPU_RE.match(line), _L_MIG_RE.match(line)
        if gpu_match:
            gpu = int(gpu_match.group(1))
        elif mig_match:
            if gpu is None:
                raise ValueError("nvidia-smi -L lists MIG device %r before any GPU line" % line.strip())
            devices.append({"gpu": gpu, "device": int(mig_match.group(2)), "profile": mig_match.group(1),
                            "uuid": mig_match.group(3)})
        elif line.strip():
            raise ValueError("nvidia-smi -L line is neither a GPU nor a MIG device: %r" % line)
    return devices


def parse_mig_table(text):
    """The "MIG devices:" section of plain ``nvidia-smi`` -> {(gpu, device): {gi, ci, memory_mib, sm_count}}.

    Each device takes two rows (memory, then BAR1); only the first names GPU, GI, CI and MIG Dev.
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("| MIG devices:")), None)
    if start is None:
        raise ValueError("nvidia-smi printed no 'MIG devices:' table: %r" % text[:200])
    table = {}
    for line in lines[start + 1:]:
        if not line.startswith(("|", "+")):
            break
        match = _TABLE_MIG_RE.match(line)
        if match:
            gpu, gi, ci, device, memory, sms = (int(v) for v in match.groups())
            table[(gpu, device)] = {"gi": gi, "ci": ci, "memory_mib": memory, "sm_count": sms}
    return table


def parse_mig_gpu_instances(text):
    """``nvidia-smi mig -lgi`` -> [{gpu, gi, profile, profile_id, placement}]."""
    if "GPU instances:" not in text:
        raise ValueError("nvidia-smi mig -lgi printed no 'GPU instances:' table: %r" % text[:200])
    return [{"gpu": int(m.group(1)), "gi": int(m.group(4)), "profile": m.group(2), "profile_id": int(m.group(3)),
             "placement": m.group(5)}
            for m in (_LGI_RE.match(line) for line in text.splitlines()) if m]


def compute_slices(profile):
    """Compute slices of a MIG profile: 3 for "3g.40gb", 1 for "1c.3g.40gb" (a CI inside the GI)."""
    match = _SLICES_RE.match(profile or "")
    return int(match.group(1) or match.group(2)) if match else None


def mig_devices(listed, table, gpus):
    """Join ``-L`` (UUID, profile) with the table (GI, CI, memory, SMs) on (GPU index, MIG Dev)."""
    by_index = dict((g["index"], g) for g in gpus)
    devices = []
    for number, item in enumerate(listed):
        row = table.get((item["gpu"], item["device"]))
        if row is None:
            raise ValueError("nvidia-smi -L lists MIG device %d of GPU %d (%s) but the nvidia-smi MIG devices "
                             "table has no such row" % (item["device"], item["gpu"], item["uuid"]))
        parent = by_index.get(item["gpu"], {})
        devices.append(dict(row, index=number, gpu=item["gpu"], device=item["device"], uuid=item["uuid"],
                            profile=item["profile"], gpu_uuid=parent.get("uuid"),
                            name="%s MIG %s" % (parent.get("name", "GPU"), item["profile"]),
                            compute_slices=compute_slices(item["profile"])))
    missing = sorted(set(table) - set((d["gpu"], d["device"]) for d in devices))
    if missing:
        raise ValueError("the nvidia-smi MIG devices table has devices %s (GPU, MIG Dev) that nvidia-smi -L does "
                         "not list" % missing)
    return devices


def mig_pending_changes(gpus, pending):
    """[{gpu, current, pending}] for GPUs whose MIG mode changes at the next GPU reset or reboot."""
    return [{"gpu": g["index"], "current": pending[g["index"]][0], "pending": pending[g["index"]][1]}
            for g in gpus if g["index"] in pending and pending[g["index"]][0] != pending[g["index"]][1]]


def parse_kernel_module(text):
    """"open" or "proprietary" from /proc/driver/nvidia/version."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    if not first.startswith("NVRM version:"):
        raise ValueError("/proc/driver/nvidia/version does not start with 'NVRM version:': %r" % first)
    if "Open Kernel Module" in first:
        return "open"
    if "Kernel Module" in first:
        return "proprietary"
    raise ValueError("/proc/driver/nvidia/version names no kernel module flavour: %r" % first)


def classify_failure(rc, output):
    """(state, message) for a failure nvidia-smi names itself, or None when it is something else."""
    text = (output or "").strip()
    first = text.splitlines()[0].strip() if text else "nvidia-smi exited %s with no output" % rc
    if "Driver/library version mismatch" in text:
        return DRIVER_NOT_LOADED, "%s: the loaded kernel module differs from the installed driver; reboot" % first
    if "couldn't communicate with the NVIDIA driver" in text or rc == RC_DRIVER_NOT_LOADED:
        return DRIVER_NOT_LOADED, first
    if "No devices were found" in text or (rc == RC_NO_GPU and not text):
        return NO_GPU, first
    if "libnvidia-ml.so" in text or rc in (RC_NVML_MISSING, 127):
        return NO_DRIVER, first
    return None


def _facts(state, message, path, kernel_module):
    return {
        "state": state,
        "message": message,
        "nvidia_smi_path": path,
        "driver_version": None,
        "cuda_version": None,
        "count": 0,
        "gpus": [],
        "compute_capability": None,
        "architecture": None,
        "memory_total_mib": 0,
        "memory_min_mib": 0,
        "homogeneous": None,
        "nvlink": False,
        "kernel_module": kernel_module,
    }


def build_facts(gpus, versions, nvlink, path, kernel_module, mig=None):
    """Facts for a healthy host from parsed GPUs (each still carrying its driver_version).

    ``mig`` (from read_mig; None when no GPU supports MIG) adds each MIG-capable GPU's
    ``mig_mode_pending`` and the host's ``mig_devices`` / ``mig_pending`` (/ ``mig_gpu_instances``).
    """
    lowest = min(gpus, key=lambda g: cc_tuple(g["compute_capability"]))
    kinds = set((g["name"], g["memory_mib"], g["compute_capability"]) for g in gpus)
    driver = gpus[0]["driver_version"]
    facts = _facts(HEALTHY, "%d x %s, driver %s, CUDA %s" % (len(gpus), lowest["name"], driver,
                                                             versions["cuda_version"]), path, kernel_module)
    facts.update({
        "driver_version": driver,
        "cuda_version": versions["cuda_version"],
        "count": len(gpus),
        "gpus": [dict((k, v) for k, v in g.items() if k != "driver_version") for g in gpus],
        "compute_capability": lowest["compute_capability"],
        "architecture": architecture(lowest["compute_capability"]),
        "memory_total_mib": sum(g["memory_mib"] for g in gpus),
        "memory_min_mib": min(g["memory_mib"] for g in gpus),
        "homogeneous": len(kinds) == 1,
        "nvlink": nvlink,
    })
    if mig is not None:
        _add_mig(facts, mig)
    return facts


def _add_mig(facts, mig):
    for gpu in facts["gpus"]:
        if gpu["index"] in mig["pending"]:
            gpu["mig_mode_pending"] = mig["pending"][gpu["index"]][1]
    facts["mig_devices"] = mig["devices"]
    facts["mig_pending"] = mig_pending_changes(facts["gpus"], mig["pending"])
    if mig.get("gpu_instances") is not None:
        facts["mig_gpu_instances"] = mig["gpu_instances"]
    enabled = [g["index"] for g in facts["gpus"] if g.get("mig_mode") == "Enabled"]
    if enabled:
        facts["message"] += "; MIG on GPU %s: %d MIG device(s)" % (
            ", ".join(map(str, enabled)), len(mig["devices"]))
    for change in facts["mig_pending"]:
        facts["message"] += "; GPU %(gpu)s MIG %(current)s, %(pending)s after a GPU reset" % change


def _output(path, run, args):
    rc, out, err = run([path] + args)
    if rc != 0:
        raise NvidiaSmiError("%s %s failed (rc=%s): %s" % (path, " ".join(args), rc, (out + err).strip()))
    return out


def read_mig(path, run, gpus):
    """(mig, warnings) for build_facts; (None, []) without a MIG-capable GPU (no extra call).

    One more --query-gpu call for the pending modes; with MIG enabled on a GPU, ``-L`` and the plain
    table (UUIDs, profiles; GI/CI ids, memory, SMs); ``mig -lgi`` only for an enabled GPU without MIG
    devices, to tell GPU instances lacking compute instances from none at all (it may need root).
    """
    if not any(g["mig_mode"] in MIG_MODES for g in gpus):
        return None, []
    pending = parse_mig_pending(_output(path, run, MIG_PENDING_ARGS))
    warnings = ["GPU %(gpu)s: MIG mode is %(current)s now and %(pending)s after the next GPU reset or reboot "
                "(nvidia-smi -i %(gpu)s -r, or reboot); plans follow the current mode" % change
                for change in mig_pending_changes(gpus, pending)]
    enabled = [g["index"] for g in gpus if g["mig_mode"] == "Enabled"]
    devices, instances = [], None
    if enabled:
        devices = mig_devices(parse_list_mig(_output(path, run, ["-L"])), parse_mig_table(_output(path, run, [])),
                              gpus)
        if any(not [d for d in devices if d["gpu"] == i] for i in enabled):
            rc, out, err = run([path, "mig", "-lgi"])
            if rc == 0:
                instances = parse_mig_gpu_instances(out)
            elif rc == RC_NO_GPU:  # nvidia-smi's "a query to find an object was unsuccessful": none
                instances = []
            else:
                warnings.append("MIG GPU instances not read: %s mig -lgi failed (rc=%s): %s"
                                % (path, rc, (out + err).strip()))
    return {"pending": pending, "devices": devices, "gpu_instances": instances}, warnings


def read_kernel_module(read_text):
    try:
        text = read_text(PROC_VERSION_PATH)
    except (IOError, OSError):
        return None
    return parse_kernel_module(text)


def collect(path, run, read_text):
    """Gather the facts with as few nvidia-smi calls as possible.

    ``path``: nvidia-smi, or None when not installed. Returns (facts, warnings). Raises
    NvidiaSmiError for failures that are no known state and ValueError for malformed output.
    """
    kernel_module = read_kernel_module(read_text)
    if path is None:
        return _facts(NO_DRIVER, "nvidia-smi is not installed (no NVIDIA driver)", None, kernel_module), []

    rc, out, err = run([path] + QUERY_ARGS)
    if rc != 0 or not out.strip():
        known = classify_failure(rc, out + err) if rc != 0 else (NO_GPU, "nvidia-smi lists no GPU")
        if known is None:
            raise NvidiaSmiError("%s %s failed (rc=%s): %s" % (path, " ".join(QUERY_ARGS), rc, (out + err).strip()))
        return _facts(known[0], known[1], path, kernel_module), []
    gpus = parse_query_gpu(out)

    # --version is the cheap way to the CUDA version; drivers older than it need the full table.
    rc, out, err = run([path, "--version"])
    versions = parse_version(out) if rc == 0 else None
    if versions is None:
        rc, out, err = run([path])
        if rc != 0:
            raise NvidiaSmiError("%s failed (rc=%s): %s" % (path, rc, (out + err).strip()))
        versions = parse_header(out)

    warnings = []
    nvlink = False
    if len(gpus) > 1:  # one GPU has no peer to link to: skip the call
        rc, out, err = run([path, "topo", "-m"])
        try:
            nvlink = rc == 0 and parse_topo_nvlink(out)
        except ValueError as exc:
            warnings.append("nvlink assumed absent: %s" % exc)
        if rc != 0:
            warnings.append("nvlink assumed absent: nvidia-smi topo -m failed (rc=%s): %s" % (rc, (out + err).strip()))
    mig, mig_warnings = read_mig(path, run, gpus)
    return build_facts(gpus, versions, nvlink, path, kernel_module, mig), warnings + mig_warnings
