"""The Python blocks of docs/own-model.md run as written, in order (issue 14)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "own-model.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_python_blocks_are_found():
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) == 5 and "tvm_mpq.tune(" in blocks[2]


def test_own_model_tutorial_runs(tmp_path):
    env = {"WORKDIR": str(tmp_path / "tune"), "ARTIFACT_DIR": str(tmp_path / "artifact"),
           "PT2_FILE": str(tmp_path / "net.pt2"), "__name__": "own_model_doc"}
    for i, block in enumerate(python_blocks(DOC.read_text())):
        exec(compile(block, f"{DOC.name} block {i + 1}", "exec"), env)  # noqa: S102
    assert env["result"].best is not None and env["run"].instructions > 0
    assert env["memory"]["ram_bytes"] > 0
