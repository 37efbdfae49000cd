"""The package's layers: every module imports, nothing imports upward, no cycles.

LAYERS is the one written-down order, bottom up (DESIGN.md describes it in
prose). A unit is a top-level module or subpackage of rlaif_jax; a unit may
import units of its own layer or below, never above. Within a layer the units'
imports must not form a cycle (learners -> labeler is fine, labeler -> learners
as well would not be), and no module may sit on an import cycle. Imports inside
functions count as much as those at the top of a file: hiding one in a function
changes when it runs, not what depends on what.
"""
from __future__ import annotations

import ast
import importlib
import pathlib
import pkgutil

import pytest

import rlaif_jax

LAYERS = (
    ("paths", "errors", "preemption"),   # I/O, the config error, signals
    ("mesh",),
    ("data",),
    ("models", "config"),                # incl. models.build; config: the shared schema
    ("sampling",),
    ("learners", "labeler"),
    ("eval",),
    ("demo",),                            # the demo world and the pipeline that drives it
    ("main", "dryrun", "aot"),            # entry point and its tools
)
ROOT = "rlaif_jax"
# Known violations still to remove, each with what removing it takes. Keep empty.
ALLOWED = {}


def all_modules() -> dict[str, pathlib.Path]:
  """Module name -> source file, for every module of the package."""
  out = {ROOT: pathlib.Path(rlaif_jax.__file__)}
  for info in pkgutil.walk_packages(rlaif_jax.__path__, ROOT + "."):
    spec = info.module_finder.find_spec(info.name)
    out[info.name] = pathlib.Path(spec.origin)
  return out


def _imported(node, module: str, is_pkg: bool, known) -> list[str]:
  """The package modules an import statement names (a `from X import y` names
  X.y when that is a module, else X)."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names]
  base = module if is_pkg else module.rpartition(".")[0]
  if node.level:
    parts = base.split(".")
    base = ".".join(parts[:len(parts) - node.level + 1])
    target = f"{base}.{node.module}" if node.module else base
  else:
    target = node.module
  return [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target
          for a in node.names]


def import_graph(modules: dict[str, pathlib.Path]) -> dict[str, set[str]]:
  """Module -> the package modules it imports anywhere in its file."""
  graph = {}
  for name, file in modules.items():
    deps = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        for target in _imported(node, name, file.name == "__init__.py", modules):
          while target not in modules and "." in target:   # `import a.b.c` attribute paths
            target = target.rpartition(".")[0]
          if target.startswith(ROOT + ".") and target != name:
            deps.add(target)
    graph[name] = deps
  return graph


def unit(module: str) -> str:
  return module.split(".")[1] if "." in module else ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one node (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in sorted(graph.get(v, ())):
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
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def violations(graph: dict[str, set[str]], layers=LAYERS, allowed=()) -> list[str]:
  """Every upward import, module cycle, cycle between units and unplaced unit
  (edges in `allowed` aside)."""
  rank = {u: i for i, layer in enumerate(layers) for u in layer}
  graph = {src: {d for d in dsts if (src, d) not in allowed} for src, dsts in graph.items()}
  problems = []
  for u in sorted({unit(m) for m in graph} - set(rank) - {""}):
    problems.append(f"unit {u!r} is in no layer: add it to LAYERS")
  for src in sorted(graph):
    for dst in sorted(graph[src]):
      a, b = unit(src), unit(dst)
      if a in rank and b in rank and rank[b] > rank[a]:
        problems.append(f"upward import: {src} ({a}, layer {rank[a]}) -> {dst} ({b}, layer {rank[b]})")
  for comp in _cycles(graph):
    problems.append(f"import cycle between modules: {' <-> '.join(comp)}")
  units = {}
  for src, dsts in graph.items():
    units.setdefault(unit(src), set()).update(unit(d) for d in dsts if unit(d) != unit(src))
  for comp in _cycles(units):
    problems.append(f"import cycle between units: {' <-> '.join(comp)}")
  return problems


@pytest.fixture(scope="module")
def modules():
  return all_modules()


def test_every_module_imports(modules):
  for name in modules:
    importlib.import_module(name)


def test_no_upward_imports_and_no_cycles(modules):
  assert violations(import_graph(modules), allowed=ALLOWED) == []


def test_the_graph_sees_imports_inside_functions(modules):
  """Module-level and function-level imports, absolute and relative, are edges."""
  graph = import_graph(modules)
  assert "rlaif_jax.models.build" in graph["rlaif_jax.learners.sft"]       # module level
  assert "rlaif_jax.dryrun" in graph["rlaif_jax.main"]                     # inside a function
  assert "rlaif_jax.data.formats" in graph["rlaif_jax.data.sources"]       # from package import module


def test_a_planted_upward_import_fails():
  ok = {"rlaif_jax.mesh": set(), "rlaif_jax.models.build": {"rlaif_jax.mesh"},
        "rlaif_jax.learners.sft": {"rlaif_jax.models.build"}}
  assert violations(ok) == []
  up = {**ok, "rlaif_jax.models.build": {"rlaif_jax.mesh", "rlaif_jax.learners.sft"}}
  problems = violations(up)
  assert any(p.startswith("upward import: rlaif_jax.models.build (models") for p in problems)
  # the same edge is also a cycle
  assert any("rlaif_jax.learners.sft <-> rlaif_jax.models.build" in p for p in problems)


def test_a_planted_cycle_within_a_layer_fails():
  """labeler and learners share a layer: one direction is allowed, both are a cycle."""
  one_way = {"rlaif_jax.learners.rl_rewards": {"rlaif_jax.labeler.config"},
             "rlaif_jax.labeler.config": set(), "rlaif_jax.labeler.stage": set()}
  assert violations(one_way) == []
  both = {**one_way, "rlaif_jax.labeler.stage": {"rlaif_jax.learners.rl_rewards"}}
  assert violations(both) == ["import cycle between units: labeler <-> learners"]


def test_a_module_outside_every_layer_fails():
  assert violations({"rlaif_jax.newthing": set()}) == [
      "unit 'newthing' is in no layer: add it to LAYERS"]


def test_relative_imports_resolve(tmp_path):
  known = {"rlaif_jax.data", "rlaif_jax.data.formats", "rlaif_jax.data.sources"}
  node = ast.parse("from . import formats\nfrom .formats import x\nfrom .. import mesh").body
  assert _imported(node[0], "rlaif_jax.data.sources", False, known) == ["rlaif_jax.data.formats"]
  assert _imported(node[1], "rlaif_jax.data.sources", False, known) == ["rlaif_jax.data.formats"]
  assert _imported(node[2], "rlaif_jax.data.sources", False, known) == ["rlaif_jax"]
