"""The package's import graph, read from the source (every ``import`` / ``from ... import`` line, those inside
functions included): no module takes part in an import cycle, and no part of the package imports a higher layer.

``LAYERS`` is the one statement of the layer order (ARCHITECTURE.md, "Layers", says the same in words)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "draftless"
ROOT = "draftless"

# Bottom to top. A *unit* is a folder of draftless/ or a module directly in it; ``draftless`` is the package's own
# ``__init__.py`` (the public facade). A unit may import units of lower layers; units of one layer never import
# each other (inside a unit, its modules import each other freely, without cycles).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("atomic", "paths", "tokenizer_identity"),  # leaves: atomic writes, where files live, a vocabulary's identity
    ("index", "hf", "fastpath", "grammar"),  # arrays in, arrays out; the transformers boundary; cheaper
    # verification passes; grammars over a vocabulary (llguidance)
    ("stores", "engine"),  # datastores on disk; the speculative loop
    ("history",),  # memory across requests (its files through stores)
    ("drafters",),  # every source of guesses, through the engine's protocol
    ("api", "integrations", "models"),  # accelerate() and generate(); serving-engine glue; load_model
    ("dropin",),  # custom_generate, over api
    (ROOT,),  # the public names
    ("app",),  # the command line, benchmarks, tools
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(modules: dict[str, Path]) -> dict[str, list[tuple[str, int]]]:
    """module -> [(imported draftless module, line)], every import statement of its file."""
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # ``from pkg import sub`` imports the module ``pkg.sub``; ``from mod import name`` imports ``mod``
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                           for alias in node.names]
            else:
                continue
            found += [(t, node.lineno) for t in dict.fromkeys(targets) if t == ROOT or t.startswith(ROOT + ".")]
        graph[name] = found
    return graph


def _unit(module: str) -> str:
    return module.split(".")[1] if "." in module else ROOT


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _modules()}
    placed = [u for layer in LAYERS for u in layer]
    assert len(placed) == len(set(placed)), "a unit is listed twice in LAYERS"
    assert units - set(placed) == set(), "new folders or top-level modules need a place in LAYERS (and ARCHITECTURE.md)"
    assert set(placed) - units == set(), "LAYERS names units that do not exist"


def test_no_unit_imports_a_higher_layer_or_a_peer():
    level = {u: i for i, layer in enumerate(LAYERS) for u in layer}
    modules = _modules()
    bad = []
    for module, imports in _imports(modules).items():
        for target, line in imports:
            a, b = _unit(module), _unit(target)
            if a != b and level[b] >= level[a]:
                bad.append(f"{modules[module].relative_to(PACKAGE.parent)}:{line} ({a}, layer {level[a]}) imports "
                           f"{target} ({b}, layer {level[b]})")
    assert not bad, "imports against the layer order (LAYERS):\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = {m: sorted({t for t, _ in imports if t != m}) for m, imports in _imports(_modules()).items()}
    # Tarjan's strongly connected components; any of more than one module is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, "modules that import each other (directly or around a cycle):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_the_scan_sees_relative_and_function_level_imports():
    """The graph is only as good as its reading: a known relative import inside a function is found."""
    imports = dict(_imports(_modules()))
    assert any(t == "draftless.tokenizer_identity" for t, _ in imports["draftless.drafters.history"])  # in a function
    assert any(t == "draftless.engine.step" for t, _ in imports["draftless.engine.batch"])


def test_package_docstrings_name_their_modules():
    """Each folder's ``__init__.py`` docstring names every module and subfolder in it: its list stays the folder's."""
    missing = []
    for init in sorted(PACKAGE.rglob("__init__.py")):
        folder = init.parent
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        names = [p.stem for p in folder.glob("*.py") if p.name != "__init__.py"]
        names += [p.name for p in folder.iterdir() if (p / "__init__.py").is_file()]
        if folder == PACKAGE:
            continue  # the root's docstring is the user's guide; ARCHITECTURE.md lists its modules
        missing += [f"{folder.relative_to(PACKAGE.parent)}: {name}" for name in sorted(names)
                    if not re.search(rf"\b{re.escape(name)}\b", doc)]
    assert not missing, "modules the package docstring does not name:\n" + "\n".join(missing)
