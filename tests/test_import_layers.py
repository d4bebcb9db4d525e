"""The library's imports run one way: every module under src/fewstep, parsed with ``ast``.

Every import counts, also one inside a function (a function-level import that hides a cycle is still a cycle);
only ``if TYPE_CHECKING:`` blocks (annotations, never executed) are left out.  Importing ``a.b.c`` runs the
``__init__`` of ``a`` and ``a.b`` too, so it also depends on those packages.  The checks:

* each top-level unit (module or package) sits in a layer and imports only from its own or lower layers;
* no module imports itself back through any chain (no cycles, within a unit too);
* a function-level import of another unit is listed below with its reason (work only one path needs), and a
  function-level import of a third-party module (not the standard library) is an optional or heavy one.
"""

import ast
import sys
from pathlib import Path

import fewstep

ROOT = Path(fewstep.__file__).parent

#: Low to high.  A unit imports only from its own layer and the layers before it.
LAYERS = [
    ("foundation", {"_io", "devices", "processes", "options", "bundled", "imagegrid", "data", "checkpoint",
                    "solution_error", "_version"}),
    ("networks", {"parametrization", "context", "nets"}),
    ("denoisers", {"denoisers", "exact", "fingerprint", "nettimes", "compiling", "precision", "teleport", "onestep",
                   "attachments", "diffusers_config", "consistency", "latent"}),
    ("grids", {"grids"}),
    ("solvers", {"solvers"}),
    ("sampling", {"plan", "api", "accel", "quant", "loading", "inversion", "diffusers_scheduler", "diffusion_features",
                  "modelinfo"}),
    ("tuning", {"tuning"}),
    ("applications", {"compose", "metrics", "restoration", "guidance", "training", "probe", "distill", "bench",
                      "detect", "dmcmc", "pruning", "reflow"}),
    ("interface", {"commands", "cli", "__main__", "fewstep"}),
]

#: Function-level imports of another unit, ``(importing unit, imported unit)``, and why they are lazy.
LAZY = {
    ("plan", "teleport"): "only a teleported start needs the data Gaussian's flow",
    ("plan", "attachments"): "only grid='tuned' reads the plan file attached to the model",
    ("compose", "accel"): "each part of a sampler is loaded only when asked for",
    ("compose", "compiling"): "each part of a sampler is loaded only when asked for",
    ("compose", "precision"): "each part of a sampler is loaded only when asked for",
    ("compose", "guidance"): "each part of a sampler is loaded only when asked for",
    ("diffusers_scheduler", "teleport"): "only a plan with a teleported start needs the data Gaussian",
    ("grids", "_io"): "only writing a grid file",
    ("grids", "bundled"): "only bundled:<model> grid files",
    ("guidance", "training"): "only loading a classifier checkpoint reads training's network config; guided "
                              "sampling never imports training",
    ("cli", "fewstep"): "the version string, after the command line is parsed",
}

#: Third-party modules a library function may import lazily: optional, heavy or rarely needed.
OPTIONAL = {
    "safetensors": "file formats, read or written only when saving or loading",
    "PIL": "image files only",
    "tqdm": "progress bars only",
    "matplotlib": "plots only (optional)",
    "scipy": "DPM-Solver-v3's splines and the exact ODE reference only",
    "diffusers": "optional: diffusers folders only",
    "sklearn": "optional (fewstep[detect]): only fitting a detector's random forest",
    "torch": "torch.distributed and torch.func, loaded where they are used",
}

LIBRARY_EXEMPT = ("commands",)  # the command line imports lazily everywhere, for start-up time


def _name(path: Path) -> str:
    parts = ["fewstep", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in ROOT.rglob("*.py")}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "fewstep"


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(module: str) -> list[tuple[str, bool, int]]:
    """``(imported fewstep module or package, inside a function, line)`` for every executed import of ``module``;
    third-party imports as ``("!name", ...)``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] == "fewstep":
                    for alias in child.names:  # ``from pkg import submodule`` imports the submodule
                        sub = f"{target}.{alias.name}"
                        found.append((sub if sub in MODULES else target, in_function, child.lineno))
                else:
                    found.append(("!" + target.split(".")[0], in_function, child.lineno))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    top = alias.name.split(".")[0]
                    found.append((alias.name if top == "fewstep" else "!" + top, in_function, child.lineno))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text()), False)
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the modules and packages importing it runs (the imported one's parent packages included,
    except packages of the importer itself, which are already running)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        own = {".".join(m.split(".")[:k]) for k in range(1, len(m.split(".")) + 1)}
        for target, _, _ in _imports(m):
            if target.startswith("!"):
                continue
            parts = target.split(".")
            for k in range(2, len(parts) + 1):
                name = ".".join(parts[:k])
                if name in MODULES and name not in own:
                    graph[m].add(name)
    return graph


def _layer(unit: str) -> int:
    for i, (_, units) in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"unit {unit!r} has no layer: add it to LAYERS in tests/test_import_layers.py")


def test_every_unit_has_one_layer():
    units = [u for _, us in LAYERS for u in us]
    assert len(units) == len(set(units))
    for m in MODULES:
        _layer(_unit(m))


def test_imports_go_down_the_layers():
    bad = []
    for m in MODULES:
        for target, _, line in _imports(m):
            if target.startswith("!") or target == "fewstep" and _unit(m) == "fewstep":
                continue
            a, b = _unit(m), _unit(target)
            if _layer(b) > _layer(a):
                bad.append(f"{MODULES[m].relative_to(ROOT.parent)}:{line} imports {target} "
                           f"({LAYERS[_layer(a)][0]} -> {LAYERS[_layer(b)][0]})")
    assert not bad, "imports up the layers:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(" -> ".join(path[path.index(n):] + [n]) if n in path else f"{m} -> {n}")
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_function_level_imports_are_listed():
    unlisted = []
    for m in MODULES:
        if _unit(m) in LIBRARY_EXEMPT:
            continue
        for target, in_function, line in _imports(m):
            if not in_function:
                continue
            where = f"{MODULES[m].relative_to(ROOT.parent)}:{line}"
            if target.startswith("!"):
                if target[1:] not in OPTIONAL and target[1:] not in sys.stdlib_module_names:
                    unlisted.append(f"{where} imports {target[1:]} in a function (not an optional dependency)")
            elif _unit(target) != _unit(m) and (_unit(m), _unit(target)) not in LAZY:
                unlisted.append(f"{where} imports {target} in a function: import it at the top, or list "
                                f"({_unit(m)!r}, {_unit(target)!r}) in LAZY with the reason")
    assert not unlisted, "\n".join(unlisted)


def test_sampling_never_imports_tuning_and_solvers_only_solve():
    below = {u for i, (_, us) in enumerate(LAYERS) if i < _layer("tuning") for u in us}
    for m in MODULES:
        if _unit(m) in below:
            assert not any(_unit(t) == "tuning" for t, _, _ in _imports(m) if not t.startswith("!")), m
    assert not [m for m in MODULES if m.startswith("fewstep.solvers.") and m.rsplit(".", 1)[1] in
                ("search", "descent", "optimize", "gaussian", "timetuner", "compute", "reference")]


def test_the_lists_have_no_stale_entries():
    lazy, optional = set(), set()
    for m in MODULES:
        if _unit(m) in LIBRARY_EXEMPT:
            continue
        for target, in_function, _ in _imports(m):
            if in_function and target.startswith("!") and target[1:] not in sys.stdlib_module_names:
                optional.add(target[1:])
            elif in_function and _unit(target) != _unit(m):
                lazy.add((_unit(m), _unit(target)))
    assert set(LAZY) <= lazy, f"LAZY lists imports that are no longer lazy: {sorted(set(LAZY) - lazy)}"
    assert set(OPTIONAL) <= optional, f"OPTIONAL lists modules no longer imported lazily: {sorted(set(OPTIONAL) - optional)}"


def test_metric_extractors_import_one_way():
    """Base class <- concrete extractors <- registry."""
    local = {m: {_name_in(t, "fewstep.metrics") for t, _, _ in _imports(f"fewstep.metrics.{m}")} - {None}
             for m in ("features", "inception", "fashion_classifier", "extractors")}
    assert local["features"] == set()
    assert local["inception"] <= {"features"} and local["fashion_classifier"] <= {"features"}
    assert {"inception", "fashion_classifier", "features"} <= local["extractors"]


def _name_in(module: str, package: str) -> str | None:
    """``module``'s name inside ``package`` (None when outside it)."""
    return module[len(package) + 1:].split(".")[0] if module.startswith(package + ".") else None


def test_the_start_rule_uses_the_parametrizations_error_scale():
    """processes.data_error_scale states k(t) without importing parametrization (a layer above): it must equal
    Parametrization.x0_error_scale, which the start rule compares with its limits."""
    import torch

    from fewstep.parametrization import parametrization
    from fewstep.processes import VPDiscrete, data_error_scale

    for proc in (VPDiscrete.cosine(), VPDiscrete.linear(1000, 1e-4, 0.02)):
        steps = torch.arange(proc.num_train_timesteps - 1, dtype=torch.float64)  # finite log-SNR
        for pred in ("eps", "v", "x0"):
            torch.testing.assert_close(data_error_scale(proc.lam(steps), pred),
                                       parametrization(pred, proc).x0_error_scale(steps).to(torch.float64))
