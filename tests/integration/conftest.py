import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lab import lab_is_up  # noqa: E402


@pytest.fixture(scope="session")
def lab():
    """The lab fleet must be up (scripts/test.sh brings it up); without it, skip unless required."""
    if not lab_is_up():
        if os.environ.get("GPUFLEET_REQUIRE_LAB"):
            pytest.fail("the lab fleet is not running: run `.venv/bin/python lab/labctl.py up`")
        pytest.skip("the lab fleet is not running (lab/labctl.py up)")
