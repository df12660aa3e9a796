#!/usr/bin/env python3
"""Writes roles/<role>/README.md from the role's meta/argument_specs.yml, the one source of truth for
what a role does and which variables it takes. Run it after changing an argument spec:

    .venv/bin/python scripts/role_readmes.py           # write the READMEs
    .venv/bin/python scripts/role_readmes.py --check   # exit 1 naming every README that is out of date
"""
import argparse
import json
import os
import re
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROLES = os.path.join(REPO, "roles")
COLLECTION = "gpufleet.serving"
# Ansible's doc markup: C(code) V(value) O(option) RV(return value) E(env) M(module) P(plugin#type)
# I(italic) B(bold) U(url) L(text,url).
MARKUP = re.compile(r"\b(RV|[CVOEMPIBUL])\(([^()]*)\)")


def markdown(text):
    """One table cell or paragraph: Ansible markup to Markdown, on one line, pipes escaped."""
    def convert(m):
        kind, value = m.groups()
        if kind == "P":
            value = value.split("#")[0]
        if kind in ("C", "V", "O", "RV", "E", "M", "P"):
            return "`" + value + "`"
        if kind == "I":
            return "*" + value + "*"
        if kind == "B":
            return "**" + value + "**"
        if kind == "L":
            label, _unused, url = value.partition(",")
            return f"[{label.strip()}]({url.strip()})"
        return value  # U
    if isinstance(text, list):
        text = " ".join(text)
    text = " ".join(str(text).split())
    # `<name>` outside code would be read as HTML: escape it there only.
    parts = MARKUP.sub(convert, text).split("`")
    parts = [p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts)]
    return "`".join(parts).replace("|", "\\|")


def inline(value):
    """A default or choice as inline code: YAML flow style, as one would write it in group_vars."""
    if isinstance(value, bool):
        return "`" + str(value).lower() + "`"
    if isinstance(value, str):
        return "`" + value + "`" if value else '`""`'
    return "`" + json.dumps(value) + "`"


def rows(options, prefix=""):
    for name, spec in options.items():
        full = prefix + name
        kind = spec.get("type", "str")
        if spec.get("elements"):
            kind += " of " + spec["elements"]
        default = inline(spec["default"]) if "default" in spec else ""
        required = "yes" if spec.get("required") else ""
        choices = ", ".join(inline(c) for c in spec.get("choices", []))
        description = markdown(spec.get("description", ""))
        if spec.get("no_log"):
            description += " Secret: never logged."
        yield f"| `{full}` | {kind} | {default} | {required} | {choices} | {description} |"
        if spec.get("options"):
            sep = "[]." if spec.get("type") == "list" else "."
            yield from rows(spec["options"], full + sep)


def table(options):
    head = ["| Variable | Type | Default | Required | Choices | Description |", "|---|---|---|---|---|---|"]
    return head + list(rows(options))


def entry_point(role, name, spec, main_options):
    lines = [f"### `{name}`", ""]
    if spec.get("short_description") and name != "main":  # main's is the role's purpose, at the top
        lines += [markdown(spec["short_description"]) + ".", ""]
    description = spec.get("description") or []
    for paragraph in [description] if isinstance(description, str) else description:
        lines += [markdown(paragraph), ""]
    call = ["- ansible.builtin.include_role:", f"    name: {COLLECTION}.{role}"]
    if name != "main":
        call.append(f"    tasks_from: {name}")
    lines += ["```yaml", *call, "```", ""]
    options = spec.get("options") or {}
    if name != "main" and main_options and options == main_options:
        lines += ["Same variables as `main`.", ""]
    elif name != "main" and main_options and all(options.get(k) == v for k, v in main_options.items()):
        extra = {k: v for k, v in options.items() if k not in main_options}
        lines += ["The variables of `main`, and:", "", *table(extra), ""]
    elif options:
        lines += [*table(options), ""]
    else:
        lines += ["No variables.", ""]
    return lines


def readme(role):
    with open(os.path.join(ROLES, role, "meta", "argument_specs.yml"), encoding="utf-8") as f:
        specs = yaml.safe_load(f)["argument_specs"]
    main = specs.get("main", {})
    lines = [
        f"# {COLLECTION}.{role}",
        "",
        "<!-- Written by scripts/role_readmes.py from meta/argument_specs.yml: edit that file, then run the script. -->",
        "",
        markdown(main.get("short_description", "")) + ".",
        "",
        f"A role of the `{COLLECTION}` collection (see its README). Every variable below is checked against",
        "this table before the role runs; the role's defaults are in `defaults/main.yml`.",
        "",
        "## Entry points",
        "",
    ]
    for name in sorted(specs, key=lambda n: (n != "main", n)):
        lines += entry_point(role, name, specs[name], main.get("options"))
    lines += ["## License", "", "Apache-2.0", ""]
    return "\n".join(lines)


def roles():
    return sorted(r for r in os.listdir(ROLES) if os.path.isfile(os.path.join(ROLES, r, "meta", "argument_specs.yml")))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a README is out of date")
    args = parser.parse_args(argv)
    stale = []
    for role in roles():
        path = os.path.join(ROLES, role, "README.md")
        want = readme(role)
        have = open(path, encoding="utf-8").read() if os.path.exists(path) else None
        if have == want:
            continue
        stale.append(os.path.relpath(path, REPO))
        if not args.check:
            with open(path, "w", encoding="utf-8") as f:
                f.write(want)
    if args.check and stale:
        print("out of date (run scripts/role_readmes.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    for path in stale:
        print("wrote " + path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
