"""Every ```python block of README.md, docs/*.md and weights/README.md runs as written.

Each block runs on its own, in a fresh namespace, as a reader would paste it, with an empty
temporary folder as the current directory: nothing of a checkout is there, so a block
that reads or writes a file does so in the current directory. The one exception is
``weights/README.md``, which documents the file the main job leaves behind: its blocks run
where ``aiva-cy`` has run, with ``weights/aiva_digits.npz`` (trained for one epoch).

Marker convention: an HTML comment on the line right above the fence (invisible on the
rendered page) says when a block may not run here.

    <!-- docs-test: requires cuda -->              CuPy and a CUDA GPU
    <!-- docs-test: requires bf16 -->              native bfloat16 products (oneDNN) for aiva_cy
    <!-- docs-test: requires int8 -->              int8 products (oneDNN) for aiva_cy
    <!-- docs-test: requires torch onnxruntime -->  these modules importable
    <!-- docs-test: skip REASON -->                never run (say why)

A block skipped for a missing module runs wherever that module is installed.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")),
             "weights/README.md"]

_FENCE = re.compile(r"^```python[ \t]*$")
_MARKER = re.compile(r"^<!--\s*docs-test:\s*(requires|skip)\b(.*?)-->\s*$")


class Block(NamedTuple):
    document: str
    line: int                 # of the opening fence, 1-based
    code: str
    marker: Optional[str]     # "requires ..." or "skip ..." or None


def extract(text: str, document: str) -> List[Block]:
    """The ```python blocks of a markdown text, each with the marker line above it."""
    lines = text.splitlines()
    blocks: List[Block] = []
    i = 0
    while i < len(lines):
        if _FENCE.match(lines[i]):
            start = i
            i += 1
            body: List[str] = []
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise ValueError(f"{document}:{start + 1}: unclosed ```python block")
            above = lines[start - 1].strip() if start else ""
            m = _MARKER.match(above)
            blocks.append(Block(document, start + 1, "\n".join(body) + "\n",
                                f"{m.group(1)} {m.group(2).strip()}".strip() if m else None))
        i += 1
    return blocks


def _all_blocks() -> List[Block]:
    blocks: List[Block] = []
    for doc in DOCUMENTS:
        path = ROOT / doc
        if path.exists():   # an installed copy of the tests has no documents: nothing to run
            blocks.extend(extract(path.read_text(encoding="utf-8"), doc))
    return blocks


BLOCKS = _all_blocks()


def _has_cuda() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:   # no driver, no device: the same to us
        return False


def _skip_reason(marker: Optional[str]) -> Optional[str]:
    if marker is None:
        return None
    kind, _, rest = marker.partition(" ")
    if kind == "skip":
        return f"marked skip: {rest or 'no reason given'}"
    for need in rest.split():
        if need == "cuda":
            if not _has_cuda():
                return "needs CuPy and a CUDA GPU"
        elif need in ("bf16", "int8"):
            import aiva_cy

            key = "bfloat16" if need == "bf16" else "int8"
            entry = aiva_cy.blas_info()["precisions"][key]
            if not entry["available"]:
                return f"needs {key} products: {entry['missing']}"
        elif importlib.util.find_spec(need) is None:
            return f"needs {need}"
    return None


@pytest.fixture(scope="module")
def trained_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """weights/aiva_digits.npz as the main job writes it (one epoch: the format is the point)."""
    from aiva_cy.__main__ import train

    folder = tmp_path_factory.mktemp("main_job") / "weights"
    return train(folder, epochs=1, quiet=True)


@pytest.mark.skipif(not BLOCKS, reason="the documents are not next to these tests")
@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.document}:{b.line}" for b in BLOCKS])
def test_block_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    reason = _skip_reason(block.marker)
    if reason:
        pytest.skip(reason)
    if block.document == "weights/README.md":
        (tmp_path / "weights").mkdir()
        shutil.copy(request.getfixturevalue("trained_weights"), tmp_path / "weights")
    monkeypatch.chdir(tmp_path)     # an empty folder: no checkout, no weights/
    code = compile(block.code, f"{block.document}:{block.line}", "exec")
    exec(code, {"__name__": "__docs__"})


def test_every_document_has_blocks() -> None:
    """The extractor finds the examples (a renamed fence would silently test nothing)."""
    if not BLOCKS:
        pytest.skip("the documents are not next to these tests")
    found = {b.document for b in BLOCKS}
    assert {"README.md", "docs/contract.md", "weights/README.md"} <= found


def test_extract_and_markers() -> None:
    text = "\n".join([
        "intro", "```python", "a = 1", "```",
        "<!-- docs-test: requires cuda -->", "```python", "b = 2", "```",
        "<!-- docs-test: skip only a fragment -->", "```python", "c", "```",
        "```bash", "echo no", "```",
    ])
    blocks = extract(text, "x.md")
    assert [(b.line, b.code, b.marker) for b in blocks] == [
        (2, "a = 1\n", None), (6, "b = 2\n", "requires cuda"), (10, "c\n", "skip only a fragment")]
    assert _skip_reason("skip only a fragment") == "marked skip: only a fragment"
    assert _skip_reason("requires os") is None
    assert _skip_reason("requires no_such_module_here") == "needs no_such_module_here"
    with pytest.raises(ValueError, match="unclosed"):
        extract("```python\nx = 1\n", "y.md")


_ANY_FENCE = re.compile(r"^```(\w*)[ \t]*$")


def _code_blocks(text: str) -> List[Tuple[int, str, str]]:
    """(line, language, code) of every fenced block, whatever its language."""
    out: List[Tuple[int, str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _ANY_FENCE.match(lines[i])
        if m:
            start, body = i, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            out.append((start + 1, m.group(1), "\n".join(body)))
        i += 1
    return out


@pytest.mark.skipif(not BLOCKS, reason="the documents are not next to these tests")
def test_no_example_needs_a_checkout() -> None:
    """Commands and code of README.md and docs/ work in any folder: none reads or writes a
    checkout's weights/ (the main job makes ./weights itself)."""
    for doc in DOCUMENTS:
        if doc == "weights/README.md" or not (ROOT / doc).exists():
            continue
        for line, lang, code in _code_blocks((ROOT / doc).read_text(encoding="utf-8")):
            assert not re.search(r"""["'=\s]weights/""", code), f"{doc}:{line} ({lang}) uses weights/"


@pytest.mark.skipif(not BLOCKS, reason="the documents are not next to these tests")
def test_readme_says_how_to_build_a_wheel() -> None:
    """A documented command that leaves a wheel in dist/, and the install from there."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    bash = "\n".join(code for _, lang, code in _code_blocks(readme) if lang == "bash")
    assert "python -m pip wheel --no-deps -w dist ." in bash
    assert 'pip install "$(ls dist/aiva_cy-*.whl)' in bash
