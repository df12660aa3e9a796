"""`python3 -m sglang.launch_server ...` -> the stand-in (TEST DOUBLE, not SGLang)."""
import sys

from standin.launch import sglang_launch_server

if __name__ == "__main__":
    sys.exit(sglang_launch_server())
