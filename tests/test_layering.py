"""The architecture, checked: every `import` inside gemlora (module level or deferred into a
function alike) must follow an arrow of the picture below, and no modules import each other in a
circle. Read from the source with `ast`: nothing is imported.

    cli ───────────────────────────────────────────────┐   the `gemlora` command mounts all
    serve.launch ─> serve.gateway ─> serve.jobs ─┐      │
                         │               │       │      │
                         └──> serve <────┘       │      │
                                │                v      v
    train ─────────────────────>│────────> train.config
      │                         v                │
      └──────────> evals, adapters, data <───────┘   (evals: graders; evals ─> data)
                           │
                           v
                         core   (gemlora/: paths, bases, config, the run contract)
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from gemlora.paths import REPO_ROOT

# Where each package's source lives (pyproject.toml's package-dir mapping).
SOURCES = {
    "gemlora": "gemlora",
    "gemlora.data": "data",
    "gemlora.train": "train",
    "gemlora.adapters": "adapters",
    "gemlora.evals": "evals",
    "gemlora.serve": "serve",
}

# Each layer and its modules: a module belongs to the layer of its longest matching prefix.
LAYERS = {
    "cli": ("gemlora.cli", "gemlora.config_reference"),
    "serve.launch": (
        "gemlora.serve.launcher",
        "gemlora.serve.config",
        "gemlora.serve.engine_cli",
        "gemlora.serve.keys_cli",
    ),
    "serve.gateway": ("gemlora.serve.gateway",),
    "serve.jobs": ("gemlora.serve.jobs",),
    "serve": ("gemlora.serve",),
    "train.config": ("gemlora.train.config",),  # all that serve may know of training
    "train": ("gemlora.train",),
    "adapters": ("gemlora.adapters",),
    "evals": ("gemlora.evals",),  # graders: evaluation now, RL rewards later
    "data": ("gemlora.data",),
    "core": ("gemlora",),
}

# The arrows: which layers each layer may import (besides its own modules).
ALLOWED = {
    "cli": set(LAYERS),
    "serve.launch": {"serve.gateway", "serve.jobs", "serve", "evals", "adapters", "data", "core"},
    "serve.gateway": {"serve.jobs", "serve", "evals", "adapters", "data", "core"},
    "serve.jobs": {"serve", "train.config", "evals", "adapters", "data", "core"},
    "serve": {"evals", "adapters", "data", "core"},
    "train": {"train.config", "evals", "adapters", "data", "core"},
    "train.config": {"evals", "adapters", "core"},  # graders are validated with the config
    "evals": {"data", "core"},
    "adapters": {"core"},
    "data": {"core"},
    "core": set(),
}


def test_every_import_follows_an_arrow_of_the_architecture():
    wrong = [
        f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
        for module, target in import_arrows()
        if layer_of(target) != layer_of(module)
        and layer_of(target) not in ALLOWED[layer_of(module)]
    ]
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_modules_import_each_other_in_a_circle():
    graph: dict[str, set[str]] = {module: set() for module in modules()}
    for module, target in import_arrows(type_checking=False):
        # Importing `a.b.c` runs the `__init__` of `a.b` first (unless it is the importer's own).
        graph[module] |= {target} | (_packages_of(target) - _packages_of(module))
    cycles = [sorted(group) for group in strongly_connected(graph) if len(group) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_the_picture_names_every_layer_and_no_module_is_left_out():
    assert set(ALLOWED) == set(LAYERS)
    assert all(allowed <= set(LAYERS) for allowed in ALLOWED.values())
    assert len(modules()) > 50  # the package was found


def test_the_checker_sees_a_deferred_import_against_the_layering(tmp_path):
    """A serve module importing the trainer inside a function is an arrow too."""
    source = "def f():\n    from gemlora.train.run import run_training\n"
    tree = ast.parse(source)
    targets = set(_imported(tree, "gemlora.serve.engine", type_checking=True))
    assert targets == {"gemlora.train.run"}
    assert "train" not in ALLOWED[layer_of("gemlora.serve.engine")]


# --- reading the package ----------------------------------------------------------------------


@cache
def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (`gemlora.serve.jobs.api`)."""
    found = {}
    for package, folder in SOURCES.items():
        for path in (REPO_ROOT / folder).rglob("*.py"):
            relative = path.relative_to(REPO_ROOT / folder).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _packages_of(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))} | {module}


def layer_of(module: str) -> str:
    matches = [
        (len(prefix), layer)
        for layer, prefixes in LAYERS.items()
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(matches)[1]


def import_arrows(type_checking: bool = True) -> list[tuple[str, str]]:
    """(importer, imported) for every import of a gemlora module by a gemlora module;
    `type_checking=False` leaves out imports made only for type checkers."""
    arrows = []
    for module, path in modules().items():
        tree = ast.parse(path.read_text(), str(path))
        arrows += [(module, target) for target in _imported(tree, module, type_checking)]
    return arrows


def _imported(tree: ast.AST, module: str, type_checking: bool) -> list[str]:
    skipped = set() if type_checking else _type_checking_nodes(tree)
    targets = []
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                targets.append(submodule if submodule in modules() else node.module)
    return [t for t in targets if t.split(".")[0] == "gemlora" and t != module]


def _type_checking_nodes(tree: ast.AST) -> set[ast.AST]:
    blocks = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
    ]
    return {inner for block in blocks for inner in ast.walk(block)}


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            groups.append(group)

    for node in graph:
        if node not in index:
            visit(node)
    return groups
