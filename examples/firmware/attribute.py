#!/usr/bin/env python3
"""Splits the flash of a footprint probe (`core-only`) by who the bytes belong to.

Every instruction of `.text` is attributed to the innermost inlined frame (`llvm-addr2line -i`)
that is not from `core` or `compiler_builtins`, so code that LTO inlined into `main` counts for
the function it came from. Groups:

- `app-json`: the application's serde-json-core (`serde`, `serde_json_core`, the probe's
  `Desired`/`Reported` derives, `RawJson::parse`/`parse_escaped`);
- `builtins`: `compiler_builtins` (memcpy, memmove, memclr, memcmp, shifts), what a C
  library's `-Os` figures leave out;
- `core`: Rust's `core` outside any of our frames (UTF-8 checks, panic entry points);
- `deps`: other crates.io code (heapless, cortex-m-rt's start-up, which `baseline` has too);
- `iothub`: spec, sdk-nostd and the probe itself;
- `rodata`: `.rodata`, not split.

Usage (from target/firmware/thumbv7em-none-eabihf/release):

    python3 ../../../../examples/firmware/attribute.py core-only
    python3 ../../../../examples/firmware/attribute.py thermostat-fw --deps   # deps by crate

Needs `llvm-nm`, `llvm-objdump`, `llvm-addr2line` and `llvm-size` on the PATH. A tool for
BENCHMARKS.md; the attribution of inlined code is per instruction and approximate at the edges
(prologues and spills carry the line of whatever the compiler chose).
"""

import collections
import re
import subprocess
import sys

APP_JSON = re.compile(r"serde|Desired|Reported|RawJson::parse|EscapedStringFragment")


def run(*args, stdin=None):
    return subprocess.run(args, input=stdin, capture_output=True, text=True, check=True).stdout


def sections(elf):
    out = {}
    for line in run("llvm-size", "-A", elf).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith("."):
            out[parts[0]] = int(parts[1])
    return out


def group(frames):
    """The group of one instruction from its inline frames, innermost first."""
    for func, loc in frames:
        if APP_JSON.search(func):
            return "app-json"
        if "compiler_builtins" in func or "compiler_builtins" in loc or func.startswith("__aeabi"):
            return "builtins"
        if func in ("memcpy", "memmove", "memset", "memcmp", "bcmp"):
            return "builtins"
        if "/rustc/" in loc or func.startswith("core::") or func.startswith("<core::"):
            continue
        if "/.cargo/" in loc:
            crate = re.search(r"/registry/src/[^/]+/([^/]+)-[0-9][^/]*/", loc)
            return "deps:" + (crate.group(1) if crate else "?")
        return "iothub"
    return "core"


def main():
    args = [a for a in sys.argv[1:] if a != "--deps"]
    by_crate = "--deps" in sys.argv[1:]
    elf = args[0] if args else "core-only"
    dis = run("llvm-objdump", "-d", "--no-show-raw-insn", "--section=.text", elf)
    addrs = [int(m.group(1), 16) for m in re.finditer(r"^\s*([0-9a-f]+):\s", dis, re.M)]
    text = sections(elf)
    addrs.sort()
    sizes = [b - a for a, b in zip(addrs, addrs[1:])]
    # The last instruction: assume 2 bytes (Thumb) if nothing follows.
    sizes.append(2)
    a2l = run(
        "llvm-addr2line", "-a", "-i", "-f", "-C", "-e", elf,
        stdin="\n".join(hex(a) for a in addrs),
    )
    blocks = re.split(r"^0x[0-9a-f]+\n", a2l, flags=re.M)[1:]
    totals = collections.Counter()
    crates = collections.Counter()
    for size, block in zip(sizes, blocks):
        lines = block.strip().split("\n")
        frames = list(zip(lines[0::2], lines[1::2]))
        name = group(frames)
        if name.startswith("deps:"):
            crates[name[5:]] += size
            name = "deps"
        totals[name] += size
    flash = text.get(".text", 0) + text.get(".rodata", 0)
    print(f"{elf}: .text {text.get('.text', 0)}, .rodata {text.get('.rodata', 0)}, flash {flash}")
    for name in ("iothub", "deps", "app-json", "core", "builtins"):
        print(f"  {name:9} {totals[name]:6}")
    if by_crate:
        for crate, size in crates.most_common():
            print(f"    {crate:24} {size:6}")
    print(f"  {'rodata':9} {text.get('.rodata', 0):6}")
    print(f"  (instructions attributed: {sum(totals.values())} of {text.get('.text', 0)} bytes of .text)")


if __name__ == "__main__":
    main()
