#!/usr/bin/env python
"""The package-level import graph of gloro_keras, and the imports that run upward.

    python tools/import_graph.py            # edges "a -> b (n imports)", then upward ones
    python tools/import_graph.py --check    # exit 1 if any import runs upward

Every `import` statement counts, function-local ones included. A module's level is that of
its subpackage (`LEVELS`); an import of a higher level is "upward". Same-level imports are
allowed. The test suite runs the check (tests/test_architecture.py).
"""
import ast
import collections
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gloro_keras"

# Bottom to top: a module may import its own level and any level below it.
LEVELS = {
    "_compat": 0, "ops": 0,
    "layers": 1, "bounds": 1,
    "models": 2, "losses": 2, "metrics": 2,
    "train": 3, "data": 3, "evaluation": 3, "attacks": 3,
    "cli": 4,
    "compat": 4, "__init__": 4, "__main__": 4,  # the root package re-exports everything but cli
}


def unit(module):
    """'gloro_keras.models.margins' -> 'models'; 'gloro_keras' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path):
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts), path.name == "__init__.py"


def imports(path):
    """Absolute names of the gloro_keras modules `path` imports."""
    name, is_pkg = module_name(path)
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "gloro_keras"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                mod = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "gloro_keras":
                continue
            # `from gloro_keras import losses` imports the subpackage gloro_keras.losses
            out += [f"{mod}.{a.name}" if mod == "gloro_keras" else mod for a in node.names]
    return out


def graph():
    """{(from_unit, to_unit): [(file, imported module), ...]}."""
    edges = collections.defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        src = unit(module_name(path)[0]) if path.parent != PACKAGE else path.stem
        for mod in imports(path):
            dst = unit(mod)
            if dst != src:
                edges[(src, dst)].append((str(path.relative_to(PACKAGE.parent)), mod))
    return edges


def upward(edges):
    return {e: v for e, v in edges.items() if LEVELS.get(e[1], 9) > LEVELS.get(e[0], 9)}


def main(argv):
    edges = graph()
    for (a, b), uses in sorted(edges.items(), key=lambda e: (LEVELS.get(e[0][0], 9), e[0])):
        print(f"{a:>10} -> {b:<10} ({len(uses)} imports)")
    up = upward(edges)
    print(f"\n{len(up)} upward edges")
    for (a, b), uses in sorted(up.items()):
        for f, mod in uses:
            print(f"  {a} -> {b}: {f} imports {mod}")
    return 1 if ("--check" in argv and up) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
