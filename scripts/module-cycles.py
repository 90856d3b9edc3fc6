#!/usr/bin/env python3
"""Import cycles among a crate's top-level modules.

Usage: scripts/module-cycles.py node/src [api/src ...]

Each top-level module is a node (`foo.rs` or `foo/`, with everything below it;
`lib.rs`/`main.rs` is `crate`). An edge A -> B is a `crate::B` path in A's code
(in a `use` or inline, grouped `use crate::{B, C}` included), `crate::f` for
an item `f` the crate root defines itself (not one it re-exports: `pub use
types::*` makes `crate::Assignment` a path into `types`, which then counts as
no edge at all, as the re-export hides where it lives), or, in the crate root,
a path that starts with a module's name. Comments (doc links too) do not count. Prints every cycle (a
strongly connected component of more than one module) with the edges that make
it, and exits 1 if there is one.
"""

import re
import sys
from pathlib import Path


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] if "//" in line and '"' not in line.split("//", 1)[0] else line
                     for line in text.splitlines())


def module_of(src, path):
    rel = path.relative_to(src)
    if len(rel.parts) == 1:
        name = rel.stem
        return "crate" if name in ("lib", "main") else name
    return rel.parts[0]


def group_names(body):
    """Top-level names of a `{a, b::c, d::{e, f}}` group."""
    names, depth, current = [], 0, ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            names.append(current)
            current = ""
            continue
        if depth == 0 and ch not in "{}":
            current += ch
    names.append(current)
    return [n.strip().split("::")[0].strip() for n in names if n.strip()]


def edges_of(src):
    files = sorted(src.rglob("*.rs"))
    modules = {module_of(src, f) for f in files}
    root = next((src / n for n in ("lib.rs", "main.rs") if (src / n).exists()), None)
    root_code = strip_comments(root.read_text()) if root else ""
    root_items = set(re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?(?:fn|struct|enum|const|static|type|trait)\s+(\w+)",
                                root_code, flags=re.M))
    edges = {}
    for f in files:
        me = module_of(src, f)
        code = strip_comments(f.read_text())
        targets = set()
        for m in re.finditer(r"\bcrate::\{", code):
            end = code.find("}", m.end())
            # Find the matching brace of the group.
            level, i = 1, m.end()
            while i < len(code) and level:
                level += {"{": 1, "}": -1}.get(code[i], 0)
                i += 1
            targets.update(group_names(code[m.end():i - 1]))
        targets.update(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", code))
        if me != "crate" and any(n in root_items for n in re.findall(r"\bcrate::([A-Za-z_]\w*)", code)):
            targets.add("crate")
        if me == "crate":
            for name in modules:
                if re.search(r"(?<![:\w])" + re.escape(name) + r"::", code):
                    targets.add(name)
        for t in targets:
            t = "crate" if t == "self" else t
            if t in modules and t != me:
                edges.setdefault(me, {}).setdefault(t, set()).add(str(f.relative_to(src)))
    return modules, edges


def sccs(nodes, edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main(args):
    if not args:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    found = False
    for arg in args:
        src = Path(arg)
        modules, edges = edges_of(src)
        cycles = [sorted(c) for c in sccs(modules, edges) if len(c) > 1]
        n_edges = sum(len(t) for t in edges.values())
        if not cycles:
            print(f"{src}: no cycle among {len(modules)} modules ({n_edges} edges)")
        for c in cycles:
            found = True
            print(f"{src}: cycle among {', '.join(c)}")
            for a in c:
                for b, files in sorted(edges.get(a, {}).items()):
                    if b in c:
                        print(f"  {a} -> {b}  ({', '.join(sorted(files))})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
