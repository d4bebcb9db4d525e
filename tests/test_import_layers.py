"""The metrics modules import one way: base class <- concrete extractors <- registry."""

import ast
from pathlib import Path

import fewstep.metrics

METRICS = Path(fewstep.metrics.__file__).parent


def _local_imports(module: str) -> set[str]:
    tree = ast.parse((METRICS / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_no_import_cycle_among_extractor_modules():
    graph = {m: _local_imports(m) for m in ("features", "inception", "fashion_classifier", "extractors")}
    assert graph["features"] == set()
    assert graph["inception"] <= {"features"} and graph["fashion_classifier"] <= {"features"}
    assert {"inception", "fashion_classifier", "features"} <= graph["extractors"]


def test_metric_modules_have_no_cycle():
    modules = [p.stem for p in METRICS.glob("*.py") if p.stem != "__init__"]
    graph = {m: _local_imports(m) & set(modules) for m in modules}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            assert state.get(n) != 1, f"import cycle: {' -> '.join(path + [m, n])}"
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in modules:
        if m not in state:
            visit(m, [])
