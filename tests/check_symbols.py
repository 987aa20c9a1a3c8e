#!/usr/bin/env python3
"""The library's surface, checked from the outside.

`symbols` mode: the dynamic symbols that libmsa.so defines must be exactly
the functions that engine/msa.h declares MSA_API. The header is run through
the C compiler's preprocessor (with MSA_HAVE_CUDA defined for a CUDA build,
so that CUDA-only declarations count there), where MSA_API becomes
__attribute__((visibility("default"))); every declaration carrying that
attribute names one function. `nm -D --defined-only` lists what the library
exports. A declared function that is missing, or an exported symbol that is
not declared (an internal msa_* function, a mangled C++ launcher, something
a static archive brought in), fails the test. TOOLCHAIN_EXPORTS lists the
symbols outside msa.h that a toolchain must export, if any: it is empty
because none of ours needs one.

`includes` mode: the sources of cli/, examples/ and bindings/ include no
header of the project but the public one (<msa/msa.h>) and, in cli/, cli's
own files. The build enforces this too (their include path holds only
msa/msa.h); this names the offending line instead of a compiler error.

`layers` mode: inside the library, a layer includes only the layers below
it (docs/design.md, "Layers"): base/ nothing but engine/msa.h; kernels/ and
persist/ base/ (and not each other); memory/ those three; engine/ any.

Run by ctest (tests/symbols.cmake), label unit.
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

# Symbols libmsa.so may export that msa.h does not declare. Empty: GCC, nvcc
# and ld need none (no _init/_fini in .dynsym, no exported C++ runtime).
TOOLCHAIN_EXPORTS: set = set()

ATTR = '__attribute__((visibility("default")))'


def declared(header: Path, cc: str, cuda: bool) -> set:
    cmd = [cc, "-E", "-P", "-x", "c", str(header)]
    if cuda:
        cmd.insert(1, "-DMSA_HAVE_CUDA")
    text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    names = set()
    pieces = text.split(ATTR)[1:]
    if not pieces:
        sys.exit(f"no MSA_API declarations found in {header} (did MSA_API change?)")
    for piece in pieces:
        decl = piece.split(";", 1)[0]
        m = re.match(r"\s*[\w\s\*]*?\b(\w+)\s*\(", decl)
        if not m or "static" in decl.split("(")[0].split():
            sys.exit(f"cannot read this MSA_API declaration of {header}: {decl.strip()!r}")
        names.add(m.group(1))
    return names


def exported(lib: Path, nm: str) -> set:
    out = subprocess.run([nm, "-D", "--defined-only", str(lib)], check=True,
                         capture_output=True, text=True).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            names.add(parts[2].split("@")[0])
    return names


def check_symbols(args) -> int:
    want = declared(Path(args.header), args.cc, args.cuda)
    have = exported(Path(args.lib), args.nm)
    missing = sorted(want - have)
    extra = sorted(have - want - TOOLCHAIN_EXPORTS)
    print(f"{args.lib}: {len(have)} exported, {len(want)} declared in msa.h"
          f" ({'CUDA' if args.cuda else 'CPU'} build)")
    for n in missing:
        print(f"  declared MSA_API but not exported: {n}")
    for n in extra:
        print(f"  exported but not in msa.h: {n}")
    if missing or extra:
        print(f"FAIL: {len(missing)} missing, {len(extra)} not public")
        return 1
    print("ok: exactly the public functions are exported")
    return 0


def check_includes(args) -> int:
    root = Path(args.source)
    bad = []
    n_files = 0
    for folder in ("cli", "examples", "bindings"):
        for f in sorted((root / folder).rglob("*")):
            if f.suffix not in (".c", ".h", ".def", ".cc", ".cpp", ".cu"):
                continue
            n_files += 1
            for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
                m = re.match(r'\s*#\s*include\s*([<"])([^>"]+)[>"]', line)
                if not m:
                    continue
                kind, name = m.groups()
                own = kind == '"' and (f.parent / name).exists() and "/" not in name
                public = name == "msa/msa.h"
                project = name.split("/")[0] in ("base", "engine", "memory", "kernels",
                                                 "persist", "cli", "tools", "tests")
                if kind == '"' and not own and not public:
                    bad.append(f"{f.relative_to(root)}:{i}: {line.strip()}")
                elif kind == "<" and project:
                    bad.append(f"{f.relative_to(root)}:{i}: {line.strip()}")
    if n_files == 0:
        sys.exit(f"no sources found under {root}/cli, examples, bindings")
    for b in bad:
        print(f"  reaches past msa.h: {b}")
    if bad:
        print(f"FAIL: {len(bad)} includes of internal headers")
        return 1
    print(f"ok: {n_files} files of cli/, examples/, bindings/ include only <msa/msa.h> "
          "and their own headers")
    return 0


# what each library folder may include, besides itself and engine/msa.h
LAYERS = {
    "base": set(),
    "kernels": {"base"},
    "persist": {"base"},
    "memory": {"base", "kernels", "persist"},
    "engine": {"base", "kernels", "persist", "memory"},
}


def check_layers(args) -> int:
    root = Path(args.source)
    bad, n_files = [], 0
    for layer, allowed in LAYERS.items():
        for f in sorted((root / layer).rglob("*")):
            if f.suffix not in (".c", ".h", ".cu", ".cuh"):
                continue
            n_files += 1
            for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
                m = re.match(r'\s*#\s*include\s*"([^"]+)"', line)
                if not m or "/" not in m.group(1):
                    continue
                top = m.group(1).split("/")[0]
                if m.group(1) == "engine/msa.h" or top == layer or top in allowed:
                    continue
                if top in LAYERS or top in ("cli", "tests", "tools", "bindings", "examples"):
                    bad.append(f"{f.relative_to(root)}:{i}: {layer}/ includes {m.group(1)}")
    if n_files == 0:
        sys.exit(f"no library sources found under {root}")
    for b in bad:
        print(f"  points up: {b}")
    if bad:
        print(f"FAIL: {len(bad)} includes against the layer order")
        return 1
    print(f"ok: {n_files} library files include only their own layer and those below")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("symbols")
    s.add_argument("--lib", required=True)
    s.add_argument("--header", required=True)
    s.add_argument("--nm", default="nm")
    s.add_argument("--cc", default="cc")
    s.add_argument("--cuda", action="store_true")
    i = sub.add_parser("includes")
    i.add_argument("--source", required=True)
    la = sub.add_parser("layers")
    la.add_argument("--source", required=True)
    args = ap.parse_args()
    if args.mode == "symbols":
        return check_symbols(args)
    return check_includes(args) if args.mode == "includes" else check_layers(args)


if __name__ == "__main__":
    sys.exit(main())
