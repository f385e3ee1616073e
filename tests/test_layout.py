"""The folders show the architecture (STYLE.md rules 6 and 14): imports run one way, with no
circle among the project's modules (lazy imports inside functions count too), and the fakes are
equipment that no engine module imports."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("batchproxy", "requests_app", "batches_app", "ops_app")
# The only place outside tests that may start a fake: `serve --fake-openai` (try-out mode).
FAKE_USERS = {"batches_app.management.commands.serve"}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `name` imports anywhere in its body, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets += [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for target in targets:
        while target and target not in modules:  # `from pkg import name` of a non-module
            target = target.rpartition(".")[0]
        if target and target != name and modules[target].name != "__init__.py":
            found.add(target)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                cycles.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_circles_among_project_modules():
    graph = _graph()
    # The scan found code:
    assert "ops_app.metrics" in graph and graph["batches_app.upstreams.openai"]
    assert _cycles(graph) == []


def test_cycle_finder_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_fakes_live_apart_and_only_try_out_mode_starts_one():
    graph = _graph()
    assert "batchproxy.fakes.openai" in graph
    assert not any(name.startswith("batches_app.fake") for name in graph)
    users = {name for name, imports in graph.items() if "batchproxy.fakes.openai" in imports}
    # Other fakes build on the fake OpenAI's (fakes/groq.py, together.py, mistral.py).
    assert {name for name in users if not name.startswith("batchproxy.fakes.")} == FAKE_USERS


def test_templates_live_at_the_top_and_nowhere_else():
    from django.conf import settings

    assert ROOT / "templates" in [Path(d) for d in settings.TEMPLATES[0]["DIRS"]]
    assert (ROOT / "templates" / "batchproxy" / "front_page.html").exists()
    in_apps = [p for package in PACKAGES for p in (ROOT / package).rglob("templates")]
    assert in_apps == []
