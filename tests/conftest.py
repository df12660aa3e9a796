"""Make `ansible_collections.gpufleet.serving` importable from a plain checkout."""
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS_PATH = os.path.join(REPO_ROOT, "collections")
if COLLECTIONS_PATH not in sys.path:
    sys.path.insert(0, COLLECTIONS_PATH)

# tests/ itself, for `from fixtures.hf_server import ...`: plain pytest puts a conftest's folder on sys.path;
# ansible-test units, which imports tests as ansible_collections.gpufleet.serving.tests.*, does not.
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)
