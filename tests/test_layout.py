"""The package keeps the shape issue 10 gave it: short functions, small modules, and no
module reaching into another's private names (scripts/package_shape.py prints the figures)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "package_shape.py"


def _shape_module():
    spec = importlib.util.spec_from_file_location("package_shape", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_package_within_limits():
    shape = _shape_module().measure()
    assert shape.modules and shape.functions  # it did read the package
    assert shape.violations() == []


def test_counter_sees_violations(tmp_path):
    """The counter itself: a long function, a large module and a private import are caught."""
    pkg = tmp_path / "tvm_mpq"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(90))
    (pkg / "a.py").write_text(f'def long():\n    """Doc."""\n{body}\n' + "\n" * 450)
    (pkg / "b.py").write_text("from tvm_mpq.a import _hidden\nimport tvm_mpq.a as a\n"
                              "y = a._other\n")
    m = _shape_module()
    shape = m.measure(pkg)
    found = shape.violations()
    assert any("function 90 lines" in v and "a.py:long" in v for v in found)
    assert any(v.startswith("module") and "a.py" in v for v in found)
    assert sum("private cross-module use" in v for v in found) == 2
