"""Fake `sglang` package of the engine stand-in (TEST DOUBLE): only `python3 -m sglang.launch_server`."""
