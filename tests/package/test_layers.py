"""The package's layers: gguf and tokenizer at the bottom, then engine, speculative, apps, cli. A module
imports only from its own layer or the ones below it (and the leaves _native, validation, hub), and no
chain of imports leads back to where it started. Read from the installed package's own sources."""

from __future__ import annotations

import ast
from pathlib import Path

import mlspecqd

PACKAGE = Path(mlspecqd.__file__).parent
LAYERS = ["gguf", "tokenizer", "engine", "speculative", "apps", "cli"]
LEAVES = {"_native", "validation", "hub"}
# The one import against the order: `mlspecqd convert --type mxfp4` writes MXFP4 with the engine's cast.
ALLOWED_UPWARD = {("mlspecqd.gguf.writer", "mlspecqd.engine.quant")}


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("mlspecqd", *path.relative_to(PACKAGE).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the mlspecqd modules it imports (anywhere in its body). `from package import module`
    counts as importing that module only, as Python runs it."""
    modules = module_names()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mlspecqd"):
                named = [f"{node.module}.{alias.name}" for alias in node.names]
                if all(item in modules or item == "mlspecqd._native" for item in named):
                    targets += named
                else:
                    targets.append(node.module)
            elif isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names if alias.name.startswith("mlspecqd")]
            graph[name] |= {target for target in targets if target in modules and target != name}
    return graph


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_cycles():
    graph, state, cycles = import_graph(), {}, []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_layers_import_only_downward():
    upward = []
    for module, targets in import_graph().items():
        source = layer_of(module)
        if source not in LAYERS:
            continue
        for target in targets:
            destination = layer_of(target)
            if destination in LAYERS and LAYERS.index(destination) > LAYERS.index(source):
                upward.append((module, target))
    assert set(upward) == ALLOWED_UPWARD
