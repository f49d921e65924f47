"""No import cycle among the project's modules (runner/, state/, phases/), hidden ones included.

Run: .venv/bin/pytest tests/unit/test_import_cycles.py -q

The graph is read from the source (ast, nothing imported): every ``import``/``from … import``
anywhere in a module (at the top or inside a function: a lazy import is still a dependency)
and every ``importlib.import_module("…")`` with a constant name (a module that imports a
variable name is taken to import every project module named by a string in it, e.g. a list of
extension modules). ``from pkg import name`` is an
edge to ``pkg.name`` when that is a module, else to ``pkg``. A cycle is reported as the chain
of modules that closes it; break it by moving the shared piece into a module both can import.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("runner", "state", "phases")


def _modules() -> dict[str, Path]:
    out = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(mod: str, level: int, current: str, is_pkg: bool) -> str:
    if level == 0:
        return mod
    base = current.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([mod] if mod else []))


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_pkg = path.name == "__init__.py"
        targets: set[str] = set()
        dynamic = False
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node.module or "", node.level, name, is_pkg)
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.add(sub if sub in mods else base)
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
                if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                    targets.add(node.args[0].value)
                else:
                    dynamic = True
        if dynamic:  # import_module(name) over a list such as MODULES = ["runner.brief", ...]
            targets.update(n.value for n in ast.walk(tree)
                           if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in mods)
        for t in targets:
            # `import a.b.c` names a.b.c; the nearest project module is the dependency
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name:
                graph[name].add(t)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One representative cycle per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan; the graph is small (~100 modules), recursion is fine
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in comps:
        members = set(comp)
        start = comp[0]
        path, seen, v = [start], {start}, start
        while True:  # walk inside the component until a module repeats
            v = sorted(graph[v] & members)[0]
            if v in seen:
                cycles.append(path[path.index(v):] + [v])
                break
            path.append(v)
            seen.add(v)
    return cycles


def test_the_graph_sees_lazy_and_importlib_imports():
    g = import_graph()
    assert "state.files" in g["runner.pipeline"]  # a top-level import
    assert any(t.startswith("phases.") for t in g["phases.steps.pilot"])
    assert "runner.brief" in g["runner.extensions"]  # import_module over MODULES


def test_a_cycle_is_found_when_there_is_one():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (move the shared code into a module both sides import):\n" + "\n".join(
        " -> ".join(c) for c in cycles)


# ---- imports at module top --------------------------------------------------------------------
# An import that must stay inside a function says why on its line: ``# lazy: <reason>``.
LAZY_MARK = re.compile(r"#\s*lazy:\s*\S")


def lazy_project_imports(text: str, rel: str) -> list[str]:
    """``rel:line: code`` for each project import inside a function whose line has no
    ``# lazy: <reason>`` (a nested function's import is counted once)."""
    lines = text.splitlines()
    hits: dict[int, str] = {}
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.ImportFrom):
                project = sub.level > 0 or (sub.module or "").split(".")[0] in ROOTS
            elif isinstance(sub, ast.Import):
                project = any(a.name.split(".")[0] in ROOTS for a in sub.names)
            else:
                continue
            if project and not LAZY_MARK.search(lines[sub.lineno - 1]):
                hits[sub.lineno] = f"{rel}:{sub.lineno}: {lines[sub.lineno - 1].strip()}"
    return [hits[n] for n in sorted(hits)]


def _in_function_project_imports() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            rel = str(path.relative_to(REPO))
            hits = lazy_project_imports(path.read_text(encoding="utf-8"), rel)
            if hits:
                out[rel] = hits
    return out


def test_a_lazy_import_needs_its_reason_on_the_line():
    src = ("import json\n"
           "def f():\n"
           "    from runner.store import x  # lazy: sqlmodel, off the status path\n"
           "    from state.files import y\n"
           "    from phases import z  # lazy:\n"
           "    import json as j\n"
           "    def g():\n"
           "        from runner import w\n")
    assert lazy_project_imports(src, "m.py") == [
        "m.py:4: from state.files import y", "m.py:5: from phases import z  # lazy:", "m.py:8: from runner import w"]


def test_project_imports_sit_at_module_top():
    """A module's header shows what it needs: project imports inside functions are allowed only
    with a ``# lazy: <why>`` comment on the line (a heavy optional dependency behind it)."""
    found = _in_function_project_imports()
    new = [line for hits in found.values() for line in hits]
    assert not new, "move these imports to the top of the module (or say `# lazy: why` on the line):\n" + \
        "\n".join(new)
