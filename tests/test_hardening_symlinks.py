"""Files through symlinks: the suffix guards of save and export_onnx look at the file that
would be overwritten, not only at the link's name."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from aiva_cy import AIVANet
from conftest import SMALL


def test_export_onnx_through_a_link_to_a_checkpoint_is_refused(tmp_path: Path):
    pytest.importorskip("onnx")
    net = AIVANet(**SMALL, seed=0)
    ckpt = tmp_path / "checkpoint.npz"
    net.save(ckpt)
    before = ckpt.read_bytes()
    link = tmp_path / "model.onnx"
    os.symlink(ckpt, link)
    with pytest.raises(ValueError, match="resolves to"):
        net.export_onnx(link)
    assert ckpt.read_bytes() == before and link.is_symlink()


def test_save_through_an_npz_link_to_an_onnx_file_is_refused(tmp_path: Path):
    net = AIVANet(**SMALL, seed=0)
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"an onnx model")
    link = tmp_path / "weights.npz"
    os.symlink(onnx_file, link)
    with pytest.raises(ValueError, match="resolves to"):
        net.save(link)
    assert onnx_file.read_bytes() == b"an onnx model" and link.is_symlink()
    # A dangling link to a file of another kind too.
    dangling = tmp_path / "next.npz"
    os.symlink(tmp_path / "next.onnx", dangling)
    with pytest.raises(ValueError, match="resolves to"):
        net.save(dangling)
    assert not (tmp_path / "next.onnx").exists()


def test_links_to_files_of_the_same_kind_still_work(tmp_path: Path):
    net = AIVANet(**SMALL, seed=0)
    target = tmp_path / "run-5.npz"
    link = tmp_path / "latest.npz"
    os.symlink(target, link)
    net.save(link)
    assert target.exists() and link.is_symlink()
    assert AIVANet.load(link).config == net.config
