"""What the benchmarks share: commands, lab limits, the machine line and result tables."""
import os
import platform
import subprocess

INOTIFY = "/proc/sys/fs/inotify/max_user_instances"
INOTIFY_PER_HOST = 10  # systemd, journald, dockerd... in each lab host, all counted against root


def sh(cmd, **kw):
    res = subprocess.run(cmd, capture_output=True, text=True, **kw, check=False)
    if res.returncode:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
    return res


def ensure_inotify(hosts):
    """systemd in a container exits when it gets no inotify instance: the default 128 per user runs out
    at about a dozen lab hosts (all run as root)."""
    with open(INOTIFY) as f:
        limit = int(f.read())
    want = 256 + INOTIFY_PER_HOST * hosts
    if limit >= want:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"{hosts} lab hosts need fs.inotify.max_user_instances >= {want} (it is {limit}): "
                         f"sudo sysctl fs.inotify.max_user_instances={want}")
    print(f"[bench] raising fs.inotify.max_user_instances {limit} -> {want} for {hosts} lab hosts", flush=True)
    with open(INOTIFY, "w") as f:
        f.write(str(want))


def machine():
    gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**30
    return f"{platform.node()}: {os.cpu_count()} CPUs, {gib} GiB RAM, {platform.platform()}"


def markdown_table(head, rows):
    lines = [head] + rows
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)
