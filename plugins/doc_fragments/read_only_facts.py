# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""Attributes shared by the collection's read-only facts modules (each still documents its `facts`)."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
attributes:
  check_mode:
    support: full
    description: Reads only, so check mode returns the same facts.
  diff_mode:
    support: none
    description: Returns no diff; nothing changes.
  idempotent:
    support: full
    description: Reads only; C(changed) is always V(false).
"""
