import ast
import pathlib

import pytest

import factorch.decompose as decompose
from factorch.decompose import check_rank

PACKAGE = pathlib.Path(decompose.__file__).parent


def test_every_public_name_is_reexported_explicitly():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    reexported = {
        alias.asname
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.asname == alias.name
    }
    assert set(decompose.__all__) == reexported
    for name in decompose.__all__:
        assert getattr(decompose, name) is not None


def test_package_exports_functions_not_shadowed_by_modules():
    assert callable(decompose.cp) and callable(decompose.tucker2) and callable(decompose.truncated_svd)


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_decompose_never_imports_torch_nn_or_asserts(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("torch.nn") for a in node.names), path.name
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("torch.nn"), path.name
            assert not (node.module == "torch" and any(a.name == "nn" for a in node.names)), path.name
        assert not isinstance(node, ast.Assert), f"{path.name}: use exceptions, not assert"


def test_check_rank_names_the_argument_and_range():
    assert check_rank(3, 5, "ranks[0]") == 3
    with pytest.raises(ValueError, match=r"ranks\[0\] must be in \[1, 5\], got 6"):
        check_rank(6, 5, "ranks[0]")
    with pytest.raises(ValueError, match=r"rank must be in \[1, 5\], got 0"):
        check_rank(0, 5)
    with pytest.raises(TypeError, match="rank"):
        check_rank(True, 5)
