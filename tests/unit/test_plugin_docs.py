"""The plugins' documentation parses into what ansible-doc and Galaxy show: every module's DOCUMENTATION
and RETURN, and every filter/test sidecar (plugins/*/*.yml). A comma or a colon inside a flow mapping
(`key: {description: a, b, type: str}`) cuts the description and turns the rest into keys: every
description must be a non-empty string or list of strings, no option or return name may contain a
space, and an entry holds only the fields ansible-doc knows."""
import ast
import glob
import os

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULES = sorted(glob.glob(os.path.join(REPO, "plugins", "modules", "*.py")))
SIDECARS = sorted(glob.glob(os.path.join(REPO, "plugins", "filter", "*.yml"))
                  + glob.glob(os.path.join(REPO, "plugins", "test", "*.yml")))
DOC_KEYS = ("DOCUMENTATION", "RETURN")
FIELDS = {"description", "type", "elements", "required", "default", "choices", "aliases", "suboptions", "options",
          "contains", "returned", "sample", "version_added", "version_added_collection", "no_log", "deprecated",
          "support", "details", "platforms", "membership", "action_group"}


def module_docs(path):
    """DOCUMENTATION and RETURN of a module, read without importing it."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    docs = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            key = node.targets[0].id
            if key in DOC_KEYS:
                try:
                    docs[key] = yaml.safe_load(node.value.value)
                except yaml.YAMLError as err:
                    pytest.fail(f"{os.path.relpath(path, REPO)}: {key} is not valid YAML: {err}")
    return docs


def sidecar_docs(path):
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as err:
            pytest.fail(f"{os.path.relpath(path, REPO)} is not valid YAML: {err}")
    return {key: data.get(key) for key in DOC_KEYS}


def problems(where, entries, need_description=True):
    """Problems of a mapping of option, attribute or return names to their entries, and of sub-entries.
    Attributes may take their description from a doc fragment."""
    found = []
    for name, spec in (entries or {}).items():
        here = f"{where}.{name}"
        if not isinstance(name, str) or not name or " " in name:
            found.append(f"{here}: name {name!r} looks like a piece of a sentence")
        if not isinstance(spec, dict):
            found.append(f"{here}: {spec!r} is not a mapping")
            continue
        unknown = sorted(str(k) for k in spec if k not in FIELDS)
        if unknown:
            found.append(f"{here}: fields {unknown} look like pieces of a cut description")
        desc = spec.get("description")
        good = (isinstance(desc, str) and desc.strip()) or (
            isinstance(desc, list) and desc and all(isinstance(d, str) and d.strip() for d in desc))
        if not good and (need_description or "description" in spec):
            found.append(f"{here}: description {desc!r} is not a non-empty string or list of strings")
        for sub in ("suboptions", "options", "contains"):
            found += problems(f"{here}.{sub}", spec.get(sub))
    return found


def doc_problems(docs):
    found = []
    doc = docs.get("DOCUMENTATION") or {}
    if not isinstance(doc.get("description"), (str, list)):
        found.append("DOCUMENTATION.description is missing")
    found += problems("DOCUMENTATION.options", doc.get("options"))
    found += problems("DOCUMENTATION.attributes", doc.get("attributes"), need_description=False)
    found += problems("RETURN", docs.get("RETURN"))
    return found


@pytest.mark.parametrize("path", MODULES, ids=os.path.basename)
def test_module_docs(path):
    docs = module_docs(path)
    assert set(docs) == set(DOC_KEYS), f"{path} lacks {set(DOC_KEYS) - set(docs)}"
    assert doc_problems(docs) == []


@pytest.mark.parametrize("path", SIDECARS, ids=os.path.basename)
def test_sidecar_docs(path):
    assert doc_problems(sidecar_docs(path)) == []


def test_a_comma_in_a_flow_mapping_is_caught():
    docs = {"RETURN": yaml.safe_load("x: {description: One, two., type: int}")}
    assert doc_problems(docs) != []
