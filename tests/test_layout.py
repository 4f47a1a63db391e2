"""The layout, as far as tests can hold it: imports point one way (no module of the harness imports
another that imports it back, directly or through others, counting the imports inside functions: an
import inside a function is still an import); each tag is named in one place; Optuna is spoken in
harness/grid.py alone."""
import ast
import re
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


OPTUNA_USE = re.compile(r"^\s*(import optuna|from optuna)|(?<!grid)\.(user_attrs|set_user_attr|suggest_\w+|should_prune)\b"
                        r"|\bstudy\.(ask|tell|trials|sampler|study_name)\b|\btrial\.(number|report)\b", re.M)


def optuna_uses(source: str) -> list[str]:
    return [m.group(0).strip() for m in OPTUNA_USE.finditer(source)]


def test_optuna_is_spoken_in_grid_py_alone():
    """harness/grid.py is the one module that imports Optuna and reads or writes its studies and
    trials; the sweep and the tuner hold them as handles and go through its functions."""
    found = {str(path.relative_to(ROOT)): hits for path in sorted(PACKAGE.rglob("*.py"))
             if path.name != "grid.py" and (hits := optuna_uses(path.read_text()))}
    assert found == {}
    assert optuna_uses("    import optuna\nx = trial.user_attrs['point']\nstudy.ask()\nn = trial.number\n"
                       "grid.should_prune(trial, 1.0, 2)\ntrial.should_prune()\n") == \
        ["import optuna", ".user_attrs", "study.ask", "trial.number", ".should_prune"]


def environment_reads(source: str) -> list[str]:
    """What a module reads from the environment: os.environ.get / os.getenv calls, os.environ[...]
    loads and `in os.environ` tests, and the HARNESS_* names it types as strings."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"HARNESS_[A-Z_]+", node.value):
            found.append(node.value)
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.get", "os.getenv"):
            found.append(ast.unparse(node))
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and ast.unparse(node.value) == "os.environ":
            found.append(ast.unparse(node))
        elif isinstance(node, ast.Compare) and any(ast.unparse(c) == "os.environ" for c in node.comparators):
            found.append(ast.unparse(node))
    return found


def test_the_environment_is_read_in_one_place():
    """Every HARNESS_* variable is named and read in harness/environment.py; harness/backend.py reads
    the variables of the frameworks it starts (KERAS_BACKEND, XLA_FLAGS, CUDA_VISIBLE_DEVICES);
    no other module reads the environment (writing a child's or a library's settings is not reading)."""
    readers = {PACKAGE / "environment.py", PACKAGE / "backend.py"}
    found = {str(path.relative_to(ROOT)): hits for path in sorted(PACKAGE.rglob("*.py"))
             if path not in readers and (hits := environment_reads(path.read_text()))}
    assert found == {}
    backend = environment_reads((PACKAGE / "backend.py").read_text())
    assert not [h for h in backend if h.startswith("HARNESS_") or "HARNESS_" in h]
    assert sorted(environment_reads('import os\nx = os.environ.get("A")\ny = os.environ["B"]\nz = "C" in os.environ\n'
                                    'os.environ["D"] = "1"\nw = "HARNESS_DEBUG"\nv = "see HARNESS_DEBUG=1"\n')) == \
        sorted(["HARNESS_DEBUG", "os.environ.get('A')", "os.environ['B']", "'C' in os.environ"])


def test_keras_process_settings_are_set_in_backend_py_alone():
    """Keras' process-wide settings (the dtype policy, the random seed, a cleared session) are set in
    harness/backend.py alone, so one measurement's setting never leaks into another's run."""
    settings = re.compile(r"\b(set_global_policy|set_random_seed|clear_session|set_floatx)\(")
    found = {str(path.relative_to(ROOT)): settings.findall(path.read_text()) for path in sorted(PACKAGE.rglob("*.py"))
             if path.name != "backend.py" and settings.search(path.read_text())}
    assert found == {}
