"""save on a real file system: long names, symlinks, permissions, disk errors and the
temp files a killed process leaves; and processes started by spawn or forkserver."""
from __future__ import annotations

import errno
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from aiva_cy import AIVANet

SIZES = dict(input_size=16, num_tools=5, hidden_size=32, spiking_size=24)
ROOT = Path(__file__).resolve().parents[1]


def net_at(seed: int = 0) -> AIVANet:
    return AIVANet(**SIZES, seed=seed)


@pytest.mark.parametrize("length", [242, 250, 255])
def test_long_legal_names_save(tmp_path, length):
    # Before: names of 242-255 bytes failed ("File name too long") because of the temp suffix.
    path = tmp_path / ("n" * (length - 4) + ".npz")
    assert len(path.name.encode()) == length
    net_at().save(path)
    assert AIVANet.load(path).config == net_at().config


def test_save_writes_through_a_symlink(tmp_path):
    # Before: the symlink was replaced by a regular file and the target left stale.
    target = tmp_path / "real" / "net.npz"
    target.parent.mkdir()
    net_at(0).save(target)
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    net_at(1).save(link)
    assert link.is_symlink()
    np.testing.assert_array_equal(AIVANet.load(target).state_dict()["fc2.weight"],
                                  net_at(1).state_dict()["fc2.weight"])
    assert sorted(p.name for p in target.parent.iterdir()) == ["net.npz"]


def test_file_the_user_cannot_write_is_not_replaced(tmp_path, monkeypatch):
    # Before: the rename replaced a file the user had no permission to write.
    path = tmp_path / "locked.npz"
    net_at(0).save(path)
    before = path.read_bytes()
    if os.geteuid() == 0:     # root may write anything: stand in for a read-only file
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if
                            Path(p) == path and mode == os.W_OK else real_access(p, mode, **kw))
    else:
        path.chmod(0o444)
    with pytest.raises(PermissionError) as exc:
        net_at(1).save(path)
    assert str(path) in str(exc.value)
    assert path.read_bytes() == before


def test_disk_errors_name_the_path_not_the_temp_file(tmp_path, monkeypatch):
    # Before: ENOSPC surfaced as "[Errno 28] No space left on device" with no path at all.
    path = tmp_path / "net.npz"

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as exc:
        net_at().save(path)
    assert exc.value.errno == errno.ENOSPC
    assert exc.value.filename == str(path) and ".tmp" not in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_setting_in_save_is_explained(tmp_path, monkeypatch):
    # Before: "Out of range float values are not JSON compliant".
    net = net_at()
    monkeypatch.setattr(type(net), "config",
                        property(lambda self: {**self._config, "threshold": float("nan")}))
    with pytest.raises(ValueError, match="NaN or infinite"):
        net.save(tmp_path / "net.npz")


def test_temp_files_of_a_killed_save_are_cleaned_up(tmp_path):
    # Before: after kill -9 mid-save, hidden .tmp files (up to 38 MB) stayed forever.
    code = textwrap.dedent(f"""
        import os, signal
        import aiva_cy.io as aio
        from aiva_cy import AIVANet
        def die(f, arrays, header):
            f.write(b"PK\\x03\\x04" + bytes(100000))
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        aio._write_npz = die
        AIVANet(input_size=16, num_tools=5, hidden_size=32, spiking_size=24).save(
            {str(tmp_path / 'net.npz')!r})
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True)
    assert result.returncode == -9, result.stderr
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert leftovers and all(n.endswith(".tmp") for n in leftovers)
    net_at().save(tmp_path / "other.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.npz"]


def test_temp_files_of_a_live_process_are_left_alone(tmp_path):
    live = tmp_path / f".aiva_cy-save-{os.getppid()}-abcdefgh.tmp"
    live.write_bytes(b"in progress")
    net_at().save(tmp_path / "net.npz")
    assert live.exists()


# ---------------------------------------------------------------------------------------
# 10. processes: spawn and forkserver (fork while another thread is in BLAS can hang)
# ---------------------------------------------------------------------------------------
def _child_predict(net: AIVANet, x: np.ndarray) -> np.ndarray:
    return net.predict_proba(x)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_pickled_net_works_in_spawn_and_forkserver_children(method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{method} is not available here")
    net = net_at(3)
    rng = np.random.default_rng(0)
    net.train_step(rng.standard_normal((4, 16)), rng.integers(0, 5, 4))
    x = rng.standard_normal((3, 16))
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(1) as pool:
        got = pool.apply(_child_predict, (net, x))
    np.testing.assert_array_equal(got, net.predict_proba(x))
