"""The import layers of DESIGN.md, held by a test: no upward import and no cycle between packages.

Every module under forgeml/ is parsed with `ast` (imports inside functions count too) and each
import of another forgeml package is checked against the layer order below.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import forgeml

PACKAGE_ROOT = Path(forgeml.__file__).parent

# DESIGN.md's order: a package imports only packages to its left (synth and hpo share a layer).
LAYERS: list[set[str]] = [
    {"core"}, {"registry"}, {"governance"}, {"data"}, {"tokenizer"}, {"models"}, {"eval"},
    {"train"}, {"pipeline"}, {"synth", "hpo"}, {"serve"}, {"control"}, {"launch"}, {"cli"},
]  # fmt: skip
RANK = {pkg: rank for rank, layer in enumerate(LAYERS) for pkg in layer}

# Imports that break the layers, each with the work in progress that removes it; an entry
# that no longer occurs must be deleted from here (the test says which). Empty: the imports of
# serve/keys and serve/policy (now governance/), of the demo and of the old cli.py are gone.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    """Every forgeml module `path` imports, at any depth of the file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "forgeml")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "forgeml":
                yield target


def _package(module: str) -> str | None:
    """The layer package of a module (`forgeml.pipeline.run` -> `pipeline`); None for the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _all_imports() -> list[tuple[str, str]]:
    edges = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        importer = _module_name(path)
        edges += [(importer, imported) for imported in _imports(path)]
    return edges


def _violation(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported`, or None when the layers allow it."""
    src, dst = _package(importer), _package(imported)
    if src is None or dst is None or src == dst:
        return None  # the root package (version, offline switch) sits beneath everything
    for pkg in (src, dst):
        if pkg not in RANK:
            return f"package '{pkg}' has no place in DESIGN.md's layer order"
    if RANK[dst] > RANK[src]:
        return f"{src} is below {dst} in DESIGN.md's order"
    return None


def test_the_scan_sees_imports_inside_functions() -> None:
    edges = set(_all_imports())
    # pipeline/run.py imports the SFT stage inside run_pipeline only
    assert ("forgeml.pipeline.run", "forgeml.pipeline.sft_stage") in edges
    assert _violation("forgeml.data.curate", "forgeml.train.sft") is not None
    assert _violation("forgeml.train.sft", "forgeml.data.curate") is None


def test_the_readme_draws_the_same_layers() -> None:
    """README's "How it fits together" lists the packages top (cli) to bottom (core)."""
    readme = (PACKAGE_ROOT.parent / "README.md").read_text()
    block = readme.split("## How it fits together", 1)[1].split("```", 2)[1]
    drawn = [
        set(re.findall(r"(\w+)/", line.split("  ", 2)[1]))
        for line in block.splitlines()
        if line.startswith("  ") and not line.startswith("   ")
    ]
    assert drawn == LAYERS[::-1]
    assert {p.name for p in PACKAGE_ROOT.iterdir() if (p / "__init__.py").exists()} <= set(RANK)


def test_no_upward_import() -> None:
    found = {
        (importer, imported): why
        for importer, imported in _all_imports()
        if (why := _violation(importer, imported)) is not None
    }
    new = {edge: why for edge, why in found.items() if edge not in KNOWN_VIOLATIONS}
    assert not new, "imports against DESIGN.md's layers:\n" + "\n".join(
        f"  {a} -> {b}: {why}" for (a, b), why in sorted(new.items())
    )
    gone = KNOWN_VIOLATIONS - set(found)
    assert not gone, f"fixed, delete them from KNOWN_VIOLATIONS: {sorted(gone)}"


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for importer, imported in _all_imports():
        src, dst = _package(importer), _package(imported)
        if src and dst and src != dst and (importer, imported) not in KNOWN_VIOLATIONS:
            graph.setdefault(src, set()).add(dst)
    cycles = []
    state: dict[str, str] = {}  # "open" while on the DFS stack, "done" after

    def visit(pkg: str, stack: list[str]) -> None:
        state[pkg] = "open"
        for nxt in sorted(graph.get(pkg, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [pkg, nxt])
            elif nxt not in state:
                visit(nxt, stack + [pkg])
        state[pkg] = "done"

    for pkg in sorted(graph):
        if pkg not in state:
            visit(pkg, [])
    assert not cycles, "import cycles between packages: " + "; ".join(
        " -> ".join(c) for c in cycles
    )
