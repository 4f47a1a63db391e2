"""The layout's one rule that a test can hold: imports point one way. No module of the harness
imports another that imports it back, directly or through others, counting the imports inside
functions (an import inside a function is still an import)."""
import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "harness"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def harness_imports(path: Path, modules: set[str]) -> set[str]:
    """The harness modules this file imports, anywhere in it (`from harness.x import y` counts as
    harness.x.y where that is a module, else harness.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: harness_imports(path, modules) - {name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
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
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_the_finder_sees_a_cycle_through_a_function_level_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_harness_module_imports_itself_back():
    graph = import_graph()
    assert {"harness.cli", "harness.train", "harness.sweep"} <= set(graph)
    assert cycles(graph) == []


def tag_literals(source: str, names: set[str]) -> list[str]:
    """The string literals (f-strings' fixed parts too) that name a tag: `names`, or a load_runs
    column "tags.<name>"."""
    return [node.value for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and (node.value in names or node.value.startswith("tags."))]


def test_tag_names_are_typed_in_one_place():
    """Every tag is named in harness/runs.py (Tag) or harness/tracking.py (*_TAG); everywhere else
    reads and writes through those names. Checked for the dotted names and the "tags." columns, the
    ones no other string in the code can mean (a bare "verdict" is also a column, a key, a word)."""
    from harness import tracking
    from harness.runs import Tag
    names = {v for k, v in vars(Tag).items() if k.isupper()} | {v for k, v in vars(tracking).items() if k.endswith("_TAG")}
    dotted = {n for n in names if "." in n}
    assert {"check.flags", "tune.state", "harness.kind", "optuna.trial"} <= dotted
    owners = {ROOT / "harness" / "runs.py", ROOT / "harness" / "tracking.py"}
    found = {str(path.relative_to(ROOT)): hits for path in sorted((ROOT / "harness").rglob("*.py"))
             if path not in owners and (hits := tag_literals(path.read_text(), dotted))}
    assert found == {}
    assert tag_literals('x = run.get("tags.loss_floor"); y = f"tags.{n}"; z = {"check.flags": 1}', dotted) == \
        ["tags.loss_floor", "tags.", "check.flags"]
