"""The architecture as the guide states it, checked on the source: data flows one way
(upstream_quant -> downstream -> bench), no module imports another that (transitively) imports
it back, even lazily inside a function, and no task, method or upstream is named outside its
own plug-in module."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("upstream_quant", "downstream", "bench")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (top level or inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, modules) for p in files}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_even_through_lazy_imports():
    graph = _graph()
    # a package's __init__ importing its own plug-in modules is how registration works, not a cycle
    graph = {m: {t for t in deps if not t.startswith(m + ".")} for m, deps in graph.items()}
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_data_flows_one_way():
    for module, deps in _graph().items():
        top = module.split(".")[0]
        allowed = {"upstream_quant": {"upstream_quant"}, "downstream": {"upstream_quant", "downstream"},
                   "bench": set(PACKAGES)}[top]
        bad = sorted(d for d in deps if d.split(".")[0] not in allowed)
        assert not bad, f"{module} imports {bad}: {top} may only import {sorted(allowed)}"


def test_no_task_branches_outside_the_task_modules():
    from downstream.tasks import TASKS

    names = "|".join(map(re.escape, TASKS))
    pattern = re.compile(rf"""["']({names})["']""")
    files = [*(ROOT / "bench").rglob("*.py"), ROOT / "downstream" / "train.py", ROOT / "downstream" / "datamodule.py"]
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in files
            for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, "task names outside downstream/tasks/:\n" + "\n".join(hits)
