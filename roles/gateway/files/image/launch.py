"""Entrypoint of the gateway image: start the smg router from a root-only JSON file of its options.

The router's own launcher takes its API key on the command line (`--api-key`), where every process of
the host can read it (/proc/PID/cmdline). This reads the options, key included, from the file given
as the only argument (mounted read-only, mode 0600) and hands them to smg's own argument parser and
launcher in this process: the key is in no argv, no environment and no log line.

  {"port": 30080, "policy": "cache_aware", "api-key": "...", "worker-urls-file": "/etc/.../workers.json"}

Keys are smg's long option names without the dashes. True is a bare flag, false/null leave the option
out, a list gives the option once followed by every item. "worker-urls-file" names a JSON list of
worker URLs the router starts with (a missing file: none).
"""
import json
import sys

from smg.launch_router import launch_router, parse_router_args


def router_argv(options):
    options = dict(options)
    workers = list(options.pop("worker-urls", None) or [])
    workers_file = options.pop("worker-urls-file", None)
    if workers_file:
        try:
            with open(workers_file, encoding="utf-8") as handle:
                workers += json.load(handle)
        except FileNotFoundError:
            pass
    if workers:
        options["worker-urls"] = workers
    argv = []
    for name, value in options.items():
        flag = "--" + name
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            argv += [flag] + [str(item) for item in value]
        elif value is not False and value is not None:  # not `in (False, None)`: 0 == False
            argv += [flag, str(value)]
    return argv


def main():
    with open(sys.argv[1], encoding="utf-8") as handle:
        options = json.load(handle)
    launch_router(parse_router_args(router_argv(options)))


if __name__ == "__main__":
    main()
