"""The package's shape as a test: no import cycles inside `memento/`, and every import points down the layers.

Imports are read with `ast` from every module, function-local and TYPE_CHECKING imports included (they are real
dependencies, only deferred). `from memento.x import y` is an import of the module `memento.x.y` when that is a
module, else of `memento.x`. A module may import its own unit (the top-level module or sub-package it lives in) or
any unit of a lower layer; units of one layer are independent of each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "memento"

LAYERS = (  # lowest first
    ("__init__",),  # the package's face: its version, importing nothing of memento
    ("core",),  # contracts: format, spans, policy, kv, masks, precision, errors (nothing else of memento)
    ("assets",),  # offline tokenizer/model files, built once
    ("tokenizer", "synthetic"),  # Memento tokens on any HF tokenizer; the toy tasks' trace generators
    ("view",),  # the HTML trace viewer: the reports of data and eval write its pages
    ("data", "train", "engine"),  # the working parts (engine includes the vLLM extension)
    ("eval", "probe"),  # measuring: accuracy + KV, leakage
    ("rl",),  # block-masked RL: rollouts from the engines, rewards from eval's checkers
    ("toy",),  # the toy experiments and the demo, scored and probed with the layer below
    ("cli",),  # the command line
    ("__main__",),
)
ALLOWED: dict[tuple[str, str], str] = {}  # deliberate exceptions: (importer, imported) -> why


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The memento modules `name` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])]
                )
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("memento") and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def unit(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(name: str) -> int:
    for index, units in enumerate(LAYERS):
        if unit(name) in units:
            return index
    raise AssertionError(f"{name}: its unit '{unit(name)}' has no layer in tests/test_structure.py LAYERS")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_reader_sees_deferred_imports():
    edges = graph()
    assert "memento.core.mask" in edges["memento.engine.cache"], "module-level import"
    assert "memento.tokenizer" in edges["memento.core.kv"] or "memento.core.policy" in edges["memento.core.kv"]
    assert "memento.synthetic.tasks" in edges["memento.train.dataset"], "function-local import"
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_imports_point_down_the_layers():
    wrong = []
    for name, targets in sorted(graph().items()):
        for target in sorted(targets):
            if unit(target) == unit(name) or layer(target) < layer(name) or (name, target) in ALLOWED:
                continue
            way = "up" if layer(target) > layer(name) else "sideways"
            wrong.append(f"{name} -> {target} ({way})")
    assert wrong == []


def test_core_imports_no_other_part():
    outside = {(n, t) for n, ts in graph().items() if unit(n) == "core" for t in ts if unit(t) != "core"}
    assert outside == set()


def test_the_allow_list_is_still_needed():
    edges = graph()
    assert [pair for pair in ALLOWED if pair[1] not in edges.get(pair[0], set())] == []
