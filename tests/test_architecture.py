"""The package's shape: no import cycles, and no stage importing from a later one.

The import graph is read from the source with ``ast`` (nothing is imported): every ``import``
and ``from … import`` of a musegen module, at module level and inside functions alike, since a
deferred import is still a dependency. ``from musegen.x import y`` counts as an import of
``musegen.x.y`` when that is a module, else of ``musegen.x``; importing ``musegen.a.b`` also runs
the ``__init__`` of ``musegen.a``, so that package is a dependency too (unless the importer lives
inside it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "musegen"

# The stages of the data flow, in order: a module may import from its own stage or an earlier
# one, never from a later one. Modules not listed by name get the stage of their subpackage.
#   shared: what every stage uses (exceptions, file plumbing, configs, the miditok/score
#           boundary, the metrics that training and evaluation both compute);
#   data → model → checkpoint (the model saved with its config and tokenizer);
#   training / generation: both use the model and checkpoints, neither uses the other's result
#           (training imports the sampler to write a progress sample: generation is its peer);
#   render: turns scores into audio and pictures, needs nothing of the model;
#   pipeline / evaluate: the front door, and the evaluator that drives it;
#   app / cli: the front ends (``__main__`` is the console script's entry).
STAGES: list[tuple[str, tuple[str, ...]]] = [
    (
        "shared",
        (
            "musegen",
            "musegen.errors",
            "musegen.files",
            "musegen.config",
            "musegen.tokenizer",
            "musegen.score_check",
            "musegen.bar_lines",
            "musegen.beat_tracking",
            "musegen.midi_repair",
            "musegen.metrics",
        ),
    ),
    ("data", ("musegen.data",)),
    ("model", ("musegen.model",)),
    ("checkpoint", ("musegen.checkpoint",)),
    ("training / generation", ("musegen.training", "musegen.generation")),
    ("render", ("musegen.render",)),
    (
        "pipeline / evaluate",
        (
            "musegen.pipeline",
            "musegen.evaluate",
            "musegen.evaluate_groups",
            "musegen.eval_pieces",
            "musegen.eval_report",
        ),
    ),
    ("app / cli", ("musegen.app", "musegen.cli", "musegen.__main__")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from`` import (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[importer].name == "__init__.py"
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(importer: str) -> set[str]:
    """The musegen modules ``importer`` imports, wherever in the file the import is."""
    tree = ast.parse(MODULES[importer].read_text(), filename=str(MODULES[importer]))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(importer, node)
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # `import musegen.x.y` of a non-module
                name = name.rpartition(".")[0]
            if not name.startswith("musegen"):
                continue
            found.add(name)
            parent = name.rpartition(".")[0]
            while parent and not importer.startswith(parent + ".") and parent != importer:
                found.add(parent)  # its package's __init__ runs first
                parent = parent.rpartition(".")[0]
    found.discard(importer)
    return found


GRAPH = {name: imported_modules(name) for name in MODULES}


def stage_of(module: str) -> int:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(STAGES):
        for prefix in prefixes:
            # the top-level package names only itself; a new top-level module needs a row
            matches = module == prefix or (prefix != "musegen" and module.startswith(prefix + "."))
            if matches and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} has no stage: add it to STAGES in {__file__}")
    return best


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_graph_sees_the_imports_it_should():
    # A module-level import, one inside a function, and a package's __init__ all count.
    assert "musegen.model.transformer" in GRAPH["musegen.checkpoint"]
    assert "musegen.pipeline" in GRAPH["musegen.cli.generate"]
    assert "musegen.model" in GRAPH["musegen.checkpoint"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_from_a_later_stage(module: str):
    own = stage_of(module)
    later = sorted(dep for dep in GRAPH[module] if stage_of(dep) > own)
    assert not later, (
        f"{module} (stage {STAGES[own][0]!r}) imports from later stages: "
        + ", ".join(f"{dep} ({STAGES[stage_of(dep)][0]})" for dep in later)
    )


# The front door: the front ends (and the evaluator, which drives the pipeline like a user) reach
# generation, the model and checkpoints only through ``musegen.pipeline``. One exception is right:
# the generation settings table (musegen.generation.settings) is the vocabulary of a request,
# from which the CLI flags, the app's form and its API are derived; it holds no model or sampler
# (the empty package __init__ comes with it).
FRONT_ENDS = ("musegen.app", "musegen.cli", "musegen.__main__", "musegen.evaluate")
BEHIND_THE_DOOR = ("musegen.model", "musegen.generation", "musegen.checkpoint")
THROUGH_THE_WALL = {
    "musegen.generation",
    "musegen.generation.settings",
    "musegen.generation.prompt",  # parses "9-16" / "0,drums" prompt choices: text, no model
}


@pytest.mark.parametrize("module", [m for m in sorted(MODULES) if m.startswith(FRONT_ENDS)])
def test_front_ends_go_through_the_pipeline(module: str):
    deep = sorted(
        dep for dep in GRAPH[module] - THROUGH_THE_WALL if dep.startswith(BEHIND_THE_DOOR)
    )
    assert not deep, f"{module} imports {', '.join(deep)}: use musegen.pipeline instead"
