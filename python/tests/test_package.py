"""The package's rooms (docs/ARCHITECTURE.md, "The Python rooms"): the layers contract of
pyproject.toml holds (import-linter), and no module imports, directly or through others, a
module that imports it back."""
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

PYTHON = Path(__file__).resolve().parents[1]


def test_the_rooms_import_only_from_below():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    result = subprocess.run([lint, "--no-cache"], cwd=PYTHON, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def circles(imports: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in imports[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(imports):
        if module not in index:
            visit(module)
    return found


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back():
    graph = grimp.build_graph("metacompress")
    # Importing a module runs its packages' __init__ first, so an import of `a.b.c` counts as
    # one of `a.b` too. The package's own __init__ (the runtime door's facade, which every
    # submodule's import runs) is left out: it imports the runtime and nothing else.
    root = "metacompress"
    imports = {}
    for module in graph.modules:
        if module == root:
            continue
        targets = set()
        for imported in graph.find_modules_directly_imported_by(module):
            parts = imported.split(".")
            targets |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
        imports[module] = {t for t in targets if t in graph.modules and t != root and t != module}
    assert circles(imports) == []
    assert graph.find_modules_directly_imported_by(root) <= {"metacompress.runtime"}


def test_one_version_everywhere(binary):
    """The cargo workspace's version is the package's, the native library's and the CLI's (the
    C header's and mc_version()'s are checked by bindings/c/tests)."""
    import tomllib

    import metacompress as mc
    from importlib.metadata import version

    cargo = tomllib.loads((PYTHON.parent / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    assert mc.__version__ == cargo
    assert version("metacompress") == cargo
    cli = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    assert cli.stdout.split() == ["metacompress", cargo]


def test_the_package_alone_loads_no_heavy_module():
    """`import metacompress` (the runtime door) needs numpy only: it imports no torch, no
    transformers, no PIL (the numpy-only install is tested for real by .ci/wheel.sh)."""
    code = ("import sys, metacompress; heavy = {'torch', 'transformers', 'PIL', 'safetensors', "
            "'tqdm', 'matplotlib', 'accelerate'} & set(sys.modules); print(sorted(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    from metacompress import extras

    real = extras.importlib.util.find_spec
    monkeypatch.setattr(extras.importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(extras.MissingExtra) as refused:
        extras.require("metacompress.models", "hf")
    assert str(refused.value) == ('metacompress.models needs the "hf" extra (missing: transformers): '
                       'pip install "metacompress[hf]"')
    extras.require("metacompress.torch", "torch")   # installed here: no error
