"""Checkpoints are not trusted: integrity (safetensors checksum), every key and range
checked, and no resource exhaustion from small or special files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

from aiva_cy import AIVANet

SIZES = dict(input_size=16, num_tools=5, hidden_size=32, spiking_size=24)
ROOT = Path(__file__).resolve().parents[1]


def trained(steps: int = 3) -> AIVANet:
    net = AIVANet(**SIZES, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        net.train_step(rng.standard_normal((4, 16)), rng.integers(0, 5, 4))
    return net


def npz_entries(path: Path) -> Dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def write_npz(path: Path, data: Dict[str, Any]) -> Path:
    with open(path, "wb") as f:
        np.savez(f, **data)
    return path


def edit_json(data: Dict[str, Any], key: str, edit) -> None:
    obj = json.loads(str(data[key]))
    edit(obj)
    data[key] = np.array(json.dumps(obj))


# ---------------------------------------------------------------------------------------
# 1. safetensors integrity
# ---------------------------------------------------------------------------------------
def _st_parts(path: Path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return raw, n, json.loads(raw[8:8 + n])


@pytest.mark.parametrize("where", [0.1, 0.37, 0.5, 0.73, 0.999])
def test_safetensors_bit_flip_in_tensor_data_is_detected(tmp_path, where):
    # Before: 3,373 of 3,520 single-bit flips in tensor data loaded silently.
    pytest.importorskip("safetensors")
    path = tmp_path / "net.safetensors"
    trained().save(path)
    raw, n, _ = _st_parts(path)
    data_start = 8 + n
    buf = bytearray(raw)
    pos = data_start + int((len(raw) - data_start - 1) * where)
    buf[pos] ^= 0x04                    # a low exponent bit: still a finite float
    path.write_bytes(bytes(buf))
    with pytest.raises(ValueError, match="checksum") as exc:
        AIVANet.load(path)
    assert str(path) in str(exc.value)


def test_safetensors_edited_threshold_is_detected(tmp_path):
    # Before: header flips changing threshold or surrogate_slope loaded silently.
    stn = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "net.safetensors"
    trained().save(path)
    raw, n, head = _st_parts(path)
    meta = dict(head["__metadata__"])
    meta["__config__"] = meta["__config__"].replace('"threshold": 0.5', '"threshold": 0.7')
    assert meta["__config__"] != head["__metadata__"]["__config__"]
    path.write_bytes(stn.save(stn.load(raw), metadata=meta))
    with pytest.raises(ValueError, match="checksum"):
        AIVANet.load(path)


def test_safetensors_without_checksum_loads_with_a_warning(tmp_path):
    stn = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "net.safetensors"
    net = trained()
    net.save(path)
    raw, n, head = _st_parts(path)
    meta = {k: v for k, v in head["__metadata__"].items() if k != "__sha256__"}
    path.write_bytes(stn.save(stn.load(raw), metadata=meta))
    with pytest.warns(UserWarning, match="cannot be verified"):
        back = AIVANet.load(path)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)


def test_safetensors_round_trip_has_no_warning(tmp_path):
    pytest.importorskip("safetensors")
    path = tmp_path / "net.safetensors"
    trained().save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AIVANet.load(path)


# ---------------------------------------------------------------------------------------
# 3. every key, type and range of a checkpoint
# ---------------------------------------------------------------------------------------
CHECKPOINT_EDITS = {
    "negative second moment": (lambda d: d["optimizer.exp_avg_sq.fc2.weight"].__setitem__(
        (0, 0), -1e-6), "exp_avg_sq"),
    "config without threshold": (lambda d: edit_json(d, "__config__",
                                                     lambda c: c.pop("threshold")), "threshold"),
    "config without refractory_period": (lambda d: edit_json(
        d, "__config__", lambda c: c.pop("refractory_period")), "refractory_period"),
    "config with lr": (lambda d: edit_json(d, "__config__", lambda c: c.update(lr=10.0)),
                       "'lr'"),
    "config with weight_decay": (lambda d: edit_json(
        d, "__config__", lambda c: c.update(weight_decay=1.0)), "weight_decay"),
    "config with device": (lambda d: edit_json(d, "__config__",
                                               lambda c: c.update(device="cuda")), "device"),
    "config bool size": (lambda d: edit_json(d, "__config__",
                                             lambda c: c.update(num_tools=True)), "num_tools"),
    "config huge threshold": (lambda d: d.update(__config__=np.array(str(d["__config__"]).replace(
        '"threshold": 0.5', '"threshold": 1' + "0" * 400))), "threshold"),
    "optimizer unknown key": (lambda d: edit_json(d, "__optimizer__",
                                                  lambda o: o.update(amsgrad=True)), "amsgrad"),
    "optimizer eps zero": (lambda d: edit_json(d, "__optimizer__",
                                               lambda o: o.update(eps=0.0)), "eps"),
    "optimizer huge lr": (lambda d: edit_json(d, "__optimizer__",
                                              lambda o: o.update(lr=1e39)), "lr"),
    "format unknown key": (lambda d: edit_json(d, "__format__",
                                               lambda o: o.update(compressed=True)), "compressed"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_EDITS))
def test_checkpoint_key_type_and_range_checked(tmp_path, case):
    edit, pattern = CHECKPOINT_EDITS[case]
    path = tmp_path / "net.npz"
    trained().save(path)
    data = npz_entries(path)
    edit(data)
    write_npz(path, data)
    with pytest.raises(ValueError, match=pattern) as exc:
        AIVANet.load(path)
    assert str(path) in str(exc.value)


# ---------------------------------------------------------------------------------------
# 4. resource exhaustion
# ---------------------------------------------------------------------------------------
def test_extra_deflated_member_is_refused_before_decompression(tmp_path):
    # Before: every member was decompressed before the key check (2 MB file -> 2 GB RAM).
    path = tmp_path / "net.npz"
    trained().save(path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("padding.npy", "w", force_zip64=True) as member:
            member.write(b"\x93NUMPY\x01\x00v\x00{'descr': '|u1', 'fortran_order': False, "
                         b"'shape': (200000000,), }".ljust(118) + b"\n")
            chunk = bytes(1 << 20)
            for _ in range(200):
                member.write(chunk)
    assert path.stat().st_size < 2_000_000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="unexpected"):
            AIVANet.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000, f"load took {peak / 1e6:.0f} MB for a refused file"


def test_declared_huge_shape_is_refused_before_allocation(tmp_path):
    # Before: a 7.9 KB npz declaring shape (10**12,) raised MemoryError.
    path = tmp_path / "net.npz"
    trained().save(path)
    data = npz_entries(path)
    good = path.read_bytes()
    with zipfile.ZipFile(path, "w") as zf:
        with zipfile.ZipFile(__import__("io").BytesIO(good)) as src:
            for info in src.infolist():
                payload = src.read(info)
                if info.filename == "fc2.weight.npy":
                    payload = (b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, "
                               b"'shape': (1000000000000,), }".ljust(118) + b"\n") + payload[128:]
                zf.writestr(info.filename, payload)
    assert data   # the rest is intact
    with pytest.raises(ValueError, match="shape") as exc:
        AIVANet.load(path)
    assert str(path) in str(exc.value)


def _load_in_child(path: Path, timeout: float = 20.0) -> subprocess.CompletedProcess:
    # A cap on memory turns "reads until memory runs out" into a quick failure; AddressSanitizer
    # (.ci/sanitizers.sh) reserves terabytes of address space, so there the cap is left off.
    cap = "libasan" not in os.environ.get("LD_PRELOAD", "")
    code = textwrap.dedent(f"""
        import resource, sys
        if {cap}:
            resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        from aiva_cy import AIVANet
        try:
            AIVANet.load({str(path)!r})
        except ValueError as exc:
            print("ValueError:", exc)
            sys.exit(0)
        sys.exit(3)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_fifo_is_refused_not_waited_on(tmp_path, suffix):
    # Before: load of a FIFO hung forever (waiting for a writer).
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    path = tmp_path / f"pipe{suffix}"
    os.mkfifo(path)
    result = _load_in_child(path)
    assert result.returncode == 0, result.stderr
    assert "not a regular file" in result.stdout


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_symlink_to_device_is_refused(tmp_path):
    # Before: load of a symlink to /dev/zero read until memory ran out.
    path = tmp_path / "zero.npz"
    path.symlink_to("/dev/zero")
    result = _load_in_child(path)
    assert result.returncode == 0, result.stderr
    assert "not a regular file" in result.stdout


def test_directory_is_refused(tmp_path):
    path = tmp_path / "dir.npz"
    path.mkdir()
    with pytest.raises((ValueError, IsADirectoryError)):
        AIVANet.load(path)


def test_symlink_to_a_checkpoint_loads(tmp_path):
    real = tmp_path / "real.npz"
    trained().save(real)
    link = tmp_path / "link.npz"
    link.symlink_to(real)
    AIVANet.load(link)
