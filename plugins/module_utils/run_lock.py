# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""The run lock (docs/rollout.md "Two runs at once"): whether a run may take a host's lock.

Shared by the module (on the host: reads and writes the file) and its action plugin (on the controller:
who this run is, and whether a run of the same controller is still alive - only the controller can tell).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import socket
import subprocess
import time

ACQUIRE, OURS, TAKE, REFUSE = "acquire", "ours", "take", "refuse"


def decide(lock, run_id, now, max_age, break_lock=False, dead_run=None):
    """(verdict, why) for a run that wants the lock. lock: the file's record, None when there is none.

    dead_run: the id of a run the controller found dead (its own, its pid gone); only that run's lock is
    replaced, so a third run that took the lock meanwhile is not."""
    if not lock:
        return ACQUIRE, "no lock"
    holder = lock.get("run_id")
    if holder and holder == run_id:
        return OURS, "this run's lock"
    if break_lock:
        return TAKE, "broken on request (gpufleet_break_lock=true)"
    if dead_run and holder == dead_run:
        return TAKE, "its ansible-playbook process is gone from its controller (a killed or failed run)"
    age = lock_age(lock, now)
    if max_age and age is not None and age > max_age:
        return TAKE, "older than gpufleet_lock_max_age=%ds" % max_age
    return REFUSE, "held by another run"


def lock_age(lock, now):
    taken = lock.get("acquired_at")
    return now - taken if isinstance(taken, (int, float)) else None


def record(owner, now):
    """What the lock file holds: the run and when this host's lock was taken (the host's clock, which
    alone ages it, so the controllers' clocks do not matter)."""
    keep = ("run_id", "controller", "boot_id", "pid", "started", "user")
    return dict([(k, owner.get(k)) for k in keep] + [("acquired_at", now), ("schema", 1)])


# --- controller side -------------------------------------------------------------------------------------

def _boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except (IOError, OSError):
        return ""


def process_started(pid):
    """Start time (epoch seconds, as text) of a running process of this machine, or None when there is
    none. It tells the process apart from a later one that got the same pid."""
    if os.path.isdir("/proc/self"):
        try:
            with open("/proc/%d/stat" % pid) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open("/proc/stat") as handle:
                boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
            return "%.2f" % (boot + int(fields[19]) / float(os.sysconf("SC_CLK_TCK")))  # field 22: starttime
        except (IOError, OSError, IndexError, ValueError, StopIteration):
            return None
    try:  # no /proc (macOS): ps
        out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, check=False)
    except OSError:
        return None
    stamp = out.stdout.strip()
    if out.returncode or not stamp:
        return None
    try:
        return "%.2f" % time.mktime(time.strptime(stamp, "%a %b %d %H:%M:%S %Y"))
    except ValueError:
        return stamp


def controller_run(pid):
    """This run, as a lock records it. pid: the ansible-playbook process (the parent of the worker that
    runs an action plugin: ansible-core forks its workers from it), the same for every task of the run."""
    try:
        import getpass
        user = getpass.getuser()
    except Exception:  # no passwd entry for the uid (a container)
        user = str(os.getuid())
    host, started = socket.gethostname(), process_started(pid)
    return {"run_id": "%s:%d:%s" % (host, pid, started), "controller": host, "boot_id": _boot_id(), "pid": pid,
            "started": float(started) if _is_number(started) else started, "user": user}


def dead_here(holder, me):
    """True when the holder is a run of this very controller (same name, same boot) whose ansible-playbook
    process is gone. A run of any other controller cannot be checked from here: it is never dead."""
    if not holder or holder.get("controller") != me["controller"] or holder.get("boot_id") != me["boot_id"]:
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    return "%s:%d:%s" % (me["controller"], pid, process_started(pid)) != holder.get("run_id")


def _is_number(text):
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


# --- messages ---------------------------------------------------------------------------------------------

def _when(epoch):
    if not isinstance(epoch, (int, float)):
        return str(epoch or "unknown")
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _span(seconds):
    if seconds is None:
        return "unknown time"
    seconds = int(max(seconds, 0))
    return "%dh%02dm" % (seconds // 3600, seconds % 3600 // 60) if seconds >= 3600 else "%dm%02ds" % divmod(seconds, 60)


def describe(holder, now):
    """run <id> (controller c, pid p, user u, started <time>; lock taken <age> ago)."""
    if holder.get("unreadable"):
        return "an unreadable lock file (%s)" % holder["unreadable"]
    return "run %s (controller %s, pid %s, user %s, started %s; lock taken %s ago)" % (
        holder.get("run_id"), holder.get("controller"), holder.get("pid"), holder.get("user"),
        _when(holder.get("started")), _span(lock_age(holder, now)))


def refusal(host, path, holder, now, max_age):
    return ("%s is locked by another run of gpufleet.serving: %s, in %s. This run stops before it changes any host. "
            "Wait for that run to end. If it is dead (killed, its controller gone), make sure no ansible-playbook "
            "of it runs any more on %s, then run again with -e gpufleet_break_lock=true%s." % (
                host, describe(holder, now), path, holder.get("controller") or "its controller",
                "; a lock older than gpufleet_lock_max_age=%ss is taken over by itself" % max_age if max_age else ""))


def takeover(host, holder, why, now):
    return "%s: took over the lock of %s: %s." % (host, describe(holder, now), why)
