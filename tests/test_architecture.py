"""The package's shape: no import circles, a light `import rece_lightning`, documented public names, small files."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "rece_lightning"
# files allowed past ~350 lines, each with its reason
LONG_FILES = {
    "editor.py": "one edit's weights, state, RECE sums and low-rank views share the editor's caches; split, each "
                 "half would reach into the other's",
    "cli.py": "LightningCLI's hooks (start-up checks, run folders, resume, failures) share the parsed config; its "
              "checks and texts are in checks.py and cli_text.py",
    "closed_form.py": "every closed form of the edit (UCE map and factors, RECE's derivation, the low-rank views of "
                      "T) sits beside the objective it minimises, which the tests use as the oracle",
    "module.py": "the Lightning shell: stage loop, keep-best, lazy denoiser loading and the generation of the "
                 "validate/test/predict steps are each a few hooks of one LightningModule",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Every import of a package module by a package module, wherever it stands (top level, inside functions, under
    ``TYPE_CHECKING``): ``from a import b`` names the module ``a.b`` when it is one, else ``a``."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (depth-first search), or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


# The layers, lowest first. A module may import its own layer and the layers below it, never one above; the core
# modules (errors, quiet, version, files: plain-file reading and writing) sit under everything. The testbed is a
# model (its own package beside models/, for its world, training and weights); the attacks use recipes' settings and
# sit under the Lightning layer, which drives them.
LAYERS = [
    ("core", {"rece_lightning.errors", "rece_lightning.quiet", "rece_lightning.version", "rece_lightning.files"}),
    ("maths", {"rece_lightning.maths"}),
    ("models", {"rece_lightning.models", "rece_lightning.testbed"}),
    ("artefacts", {"rece_lightning.artefacts"}),
    ("recipes", {"rece_lightning.recipes"}),
    ("attacks", {"rece_lightning.attacks"}),
    ("lightning", {"rece_lightning.lightning"}),
]
# the layers that never import Lightning (the library), directly or through anything they import
WITHOUT_LIGHTNING = ("core", "maths", "models", "artefacts", "recipes", "attacks")
# what the maths may import from outside the package: torch and the standard library
MATHS_THIRD_PARTY = {"torch"}


def layer_of(module: str) -> int | None:
    """The rank of ``module``'s layer in :data:`LAYERS` (``None`` for the package's facade, ``rece_lightning``)."""
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def test_every_module_has_a_layer():
    unplaced = sorted(name for name in _modules() if name != "rece_lightning" and layer_of(name) is None)
    assert not unplaced, f"modules in no layer of LAYERS: {unplaced}"


def test_lower_layers_never_import_higher_ones():
    graph = import_graph()
    upward = sorted(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
                    for name, targets in graph.items() if layer_of(name) is not None
                    for target in targets if layer_of(target) is not None and layer_of(target) > layer_of(name))
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_the_layer_check_sees_an_upward_import():
    assert layer_of("rece_lightning.maths.editor") < layer_of("rece_lightning.models.families.sd")
    assert layer_of("rece_lightning.testbed.world") == layer_of("rece_lightning.models.text")
    assert layer_of("rece_lightning.lightning.callbacks.fid") == len(LAYERS) - 1


def _third_party_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("rece_lightning", "__future__")}


def test_the_maths_is_torch_only():
    found = {name: sorted(extra) for name, path in _modules().items() if layer_of(name) == 1
             if (extra := _third_party_imports(path) - MATHS_THIRD_PARTY)}
    assert not found, f"the maths imports more than torch: {found}"


@pytest.mark.parametrize("layer", WITHOUT_LIGHTNING)
def test_layers_below_the_shell_never_import_lightning(layer):
    """No module of these layers names Lightning, and importing all of them loads no Lightning module."""
    rank = [name for name, _ in LAYERS].index(layer)
    modules = sorted(name for name in _modules() if layer_of(name) == rank and not name.endswith("__main__"))
    named = {name: sorted(hits) for name in modules
             if (hits := _third_party_imports(_modules()[name]) & {"lightning", "pytorch_lightning"})}
    assert not named, f"{layer} names Lightning: {named}"
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in ('lightning', 'pytorch_lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_graph_has_no_circles():
    graph = import_graph()
    assert "rece_lightning.lightning.module" in graph["rece_lightning.lightning.cli"]  # the graph sees real edges
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


@pytest.mark.parametrize("module", ["rece_lightning", "rece_lightning.maths.closed_form", "rece_lightning.artefacts.export",
                                    "rece_lightning.recipes.paper", "rece_lightning.files", "rece_lightning.artefacts.prompts",
                                    "rece_lightning.recipes.selection", "rece_lightning.lightning.report"])
def test_light_modules_do_not_import_lightning(module):
    code = f"import sys, {module}; print(sorted(m for m in ('lightning', 'pytorch_lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_lazy_names_resolve():
    import rece_lightning

    for name in rece_lightning.__all__:
        assert getattr(rece_lightning, name) is not None


def _public_definitions(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_"):
            yield node.name, node
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                        overrides = any(isinstance(d, ast.Name) and d.id == "override" for d in item.decorator_list)
                        if not overrides and not item.name.startswith(("on_", "training_", "validation_", "test_",
                                                                        "predict_", "configure_", "setup",
                                                                        "teardown", "state_dict", "load_state_dict",
                                                                        "add_arguments_to_parser")) and not \
                                item.name.endswith("_dataloader"):
                            yield f"{node.name}.{item.name}", item


# methods that implement an interface documented on its base class (Attack, ImageMetric, ModelFamily, nn.Module)
INTERFACE = {"run", "score", "summarize", "protocol", "prepare", "success", "matches", "matches_index", "forward",
             "encode_batch", "generation_kwargs", "make_text_encoder", "find_layers", "text_layers", "denoiser",
             "vocabulary", "encode_token_ids", "encode_with_prefix", "prefix_conditioning", "denoising_loss"}


def test_every_public_name_is_documented():
    """Modules, public classes, functions and methods carry a docstring (Lightning's hooks excepted: their meaning
    is Lightning's; and the implementations of a documented interface)."""
    missing = []
    for name, path in sorted(_modules().items()):
        tree = ast.parse(path.read_text())
        if ast.get_docstring(tree) is None:
            missing.append(name)
        for qualname, node in _public_definitions(tree):
            if ast.get_docstring(node) is None and node.name not in INTERFACE:
                missing.append(f"{name}.{qualname}")
    assert not missing, f"undocumented: {missing}"


def test_files_stay_small():
    long = {p.name: n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 360}
    unexplained = {name: n for name, n in long.items() if name not in LONG_FILES}
    assert not unexplained, f"files over ~350 lines without a reason in LONG_FILES: {unexplained}"


def test_one_tensor_hasher():
    """Content hashes come from rece_lightning.files (tensor_sha256, file_sha256) only."""
    hashing = sorted(name for name, path in _modules().items()
                     if any(isinstance(node, ast.Import | ast.ImportFrom) and "hashlib" in
                            ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])
                            for node in ast.walk(ast.parse(path.read_text()))))
    assert hashing == ["rece_lightning.files"]
