#!/usr/bin/env python3
"""Which GPU architectures the compiled CUDA code in a wheel (or .so) was built for.

A CUDA extension (.so) embeds fat binaries: a header (magic 0xBA55ED50) followed by entries,
each one cubin (machine code for one SM, kind 2) or PTX (kind 1, JIT-compiled by the driver for
that SM or any later one). Each entry header carries its target SM, whether or not its payload
is compressed, so the header walk below needs no decompression. Uncompressed cubins are also ELF
files (e_machine EM_CUDA = 190) whose e_flags hold the SM; those are counted as a cross-check.

A GPU of compute capability X.Y can run a library if some cubin is sm_XY (or the same major with
a lower minor: sm_80 cubins run on 8.6), or some PTX is for an SM <= XY.

Usage: scripts/cuda_targets.py WHEEL_OR_SO... [--json]
"""
from __future__ import annotations

import json
import mmap
import struct
import sys
import zipfile

FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
KIND = {1: "ptx", 2: "cubin"}
EM_CUDA = 190


def _elf_sm(blob, offset):
    """SM of an ELF cubin at offset, from e_flags (EF_CUDA_SM: low byte before the CUDA 12.8
    ABI, bits 8-15 from then on; the ABI version is e_ident[EI_ABIVERSION])."""
    if blob[offset:offset + 4] != b"\x7fELF" or blob[offset + 4] != 2:     # 64-bit only
        return None
    e_machine = struct.unpack_from("<H", blob, offset + 18)[0]
    if e_machine != EM_CUDA:
        return None
    e_flags = struct.unpack_from("<I", blob, offset + 48)[0]
    abi = blob[offset + 8]
    return (e_flags >> 8) & 0xFF if abi >= 8 else e_flags & 0xFF


def scan_fatbins(blob):
    """{("cubin"|"ptx", sm): count} over every fat binary in blob, plus ELF cross-check counts."""
    targets, elf = {}, {}
    pos = blob.find(FATBIN_MAGIC)
    while pos != -1:
        header_size, fat_size = struct.unpack_from("<HQ", blob, pos + 6)[0], struct.unpack_from("<Q", blob, pos + 8)[0]
        entry, end = pos + header_size, pos + header_size + fat_size
        if header_size != 16 or end > len(blob):
            pos = blob.find(FATBIN_MAGIC, pos + 4)
            continue
        while entry + 32 <= end:
            kind, _unused, entry_header, payload = struct.unpack_from("<HHIQ", blob, entry)
            arch = struct.unpack_from("<I", blob, entry + 28)[0]
            flags = struct.unpack_from("<Q", blob, entry + 40)[0] if entry_header >= 48 else 0
            if kind not in KIND or entry_header < 32:
                break
            key = (KIND[kind], arch)
            targets[key] = targets.get(key, 0) + 1
            if kind == 2 and not flags & 0x2000 and not flags & 0x8000:    # uncompressed cubin
                sm = _elf_sm(blob, entry + entry_header)
                if sm is not None:
                    elf[sm] = elf.get(sm, 0) + 1
            entry += entry_header + payload
        pos = blob.find(FATBIN_MAGIC, max(end, pos + 4))
    return targets, elf


def scan_file(path):
    """{member: {"cubin": [sm...], "ptx": [sm...], "elf_cubin": [sm...]}} for a .so or a wheel."""
    results = {}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as wheel:
            for info in wheel.infolist():
                if ".so" in info.filename.rsplit("/", 1)[-1]:
                    results[info.filename] = _summary(*scan_fatbins(wheel.read(info)))
    else:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as blob:
            results[path] = _summary(*scan_fatbins(blob))
    return {k: v for k, v in results.items() if v["cubin"] or v["ptx"]}


def _summary(targets, elf):
    return {"cubin": sorted({sm for kind, sm in targets if kind == "cubin"}),
            "ptx": sorted({sm for kind, sm in targets if kind == "ptx"}),
            "elf_cubin": sorted(elf)}


def runs_on(summary, sm):
    """Whether code with these targets can run on a GPU of SM sm (e.g. 75)."""
    cubin = any(c // 10 == sm // 10 and c <= sm for c in summary["cubin"])
    return cubin or any(p <= sm for p in summary["ptx"])


def main(argv):
    as_json = "--json" in argv
    paths = [a for a in argv[1:] if a != "--json"]
    report = {path: scan_file(path) for path in paths}
    if as_json:
        print(json.dumps(report, indent=1))
        return 0
    for path, members in report.items():
        print(path)
        for member, summary in members.items():
            print("  %-60s cubin %s  ptx %s  (ELF-checked cubins %s)  sm_75: %s" % (
                member, summary["cubin"], summary["ptx"], summary["elf_cubin"],
                "yes" if runs_on(summary, 75) else "NO"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
