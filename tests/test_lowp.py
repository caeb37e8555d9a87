"""The reduced-precision provider (aiva_cy._lowp over src_c/aiva_onednn.c): oneDNN's bf16 and
u8 x s8 products against float64 / int64 NumPy references, packed and plain, transposed and
strided, at the engine's shapes and odd ones; the thread count, the primitive cache, the
packs, and the errors.  Skips (with the reason) where oneDNN is not installed; the
missing-library errors are tested everywhere."""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from aiva_cy import _lowp
from threaded import in_fork, in_threads

try:
    _lowp.open_provider()
    INFO = _lowp.info()
    MISSING = None
except ImportError as exc:
    INFO, MISSING = None, str(exc)

needs_onednn = pytest.mark.skipif(INFO is None, reason=f"oneDNN: {MISSING}")
needs_bf16 = pytest.mark.skipif(INFO is None or not INFO["bf16"],
                                reason="no native bf16 products here")
U = 2.0 ** -24          # float32's unit roundoff


def gamma(k):
    """Higham's gamma_K: the relative bound on a float32 sum of K exact products."""
    return k * U / (1 - k * U)


def bf16_bits(a):
    """float64 -> bfloat16 bits (round to nearest even, via float32)."""
    u = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_value(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def op(a, t):
    return a.T if t else a


def runs_gemm(kind, M, N, K, tb=True):
    """Whether oneDNN's gemm function (not a matmul primitive) serves this product: one row,
    and more than 32 rows (where the CPU has AMX: int8 only, up to 128 rows)."""
    return _lowp.impl(kind, M, N, K, tb=tb).startswith("gemm:")


SHAPES = [(1, 2048, 512), (7, 1024, 2048), (33, 20, 1024), (1, 1, 1), (5, 3, 17), (64, 96, 80)]


@needs_bf16
@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("ta,tb", [(0, 1), (0, 0), (1, 0), (1, 1)])
def test_bf16_product_within_the_float32_accumulation_bound(M, N, K, ta, tb):
    rng = np.random.default_rng(M * 1000 + N + K)
    a = bf16_bits(rng.standard_normal((K, M) if ta else (M, K)))
    b = bf16_bits(rng.standard_normal((N, K) if tb else (K, N)))
    got = _lowp.gemm_bf16(a, b, ta=bool(ta), tb=bool(tb)).astype(np.float64)
    A, B = op(bf16_value(a), ta), op(bf16_value(b), tb)
    ref = A @ B
    bound = gamma(K) * (np.abs(A) @ np.abs(B))
    assert np.all(np.abs(got - ref) <= bound), float((np.abs(got - ref) / bound).max())
    # The bound is tight enough to see a wrong operand: rounding b once more to 7 bits moves
    # the result far outside it.
    coarse = op(bf16_value(b) * (1 + 2.0 ** -8), tb)
    assert np.any(np.abs(A @ coarse - ref) > bound) or np.abs(ref).max() == 0


@needs_bf16
@pytest.mark.parametrize("M", [1, 7, 33, 256])
def test_bf16_packed_weight_matches_plain_and_packs_once(M):
    rng = np.random.default_rng(M)
    N, K = 1024, 2048
    b = bf16_bits(rng.standard_normal((N, K)))          # engine layout: (out, in), tb
    packed = _lowp.PackedWeight("bf16", 1, N, K, K)
    for rows in (M, 1, M):
        a = bf16_bits(rng.standard_normal((rows, K)))
        plain = _lowp.gemm_bf16(a, b, tb=True)
        got = _lowp.gemm_bf16(a, b, tb=True, packed=packed)
        ref = bf16_value(a) @ bf16_value(b).T
        bound = gamma(K) * (np.abs(bf16_value(a)) @ np.abs(bf16_value(b)).T)
        assert np.all(np.abs(got - ref) <= bound)
        assert np.all(np.abs(plain - ref) <= bound)
    n, nbytes = packed.packs()
    if any(not runs_gemm("bf16", rows, N, K) for rows in (M, 1)):
        assert 1 <= n <= 2 and nbytes >= N * K * 2     # the matmul primitive packs it once
    else:                # oneDNN's gemm runs on the plain weight: nothing is packed
        assert (n, nbytes) == (0, 0)


@needs_bf16
def test_bf16_strided_operands():
    # Row slices of wider arrays: the row stride is the leading dimension.
    rng = np.random.default_rng(3)
    wide_a = bf16_bits(rng.standard_normal((9, 40)))
    wide_b = bf16_bits(rng.standard_normal((12, 50)))
    a, b = wide_a[:, 3:33], wide_b[:, 5:35]             # (9, 30) and (12, 30)
    a, b = np.lib.stride_tricks.as_strided(a, a.shape, wide_a.strides), \
        np.lib.stride_tricks.as_strided(b, b.shape, wide_b.strides)
    got = _lowp.gemm_bf16(a, b, tb=True)
    ref = bf16_value(a) @ bf16_value(b).T
    assert np.all(np.abs(got - ref) <= gamma(30) * (np.abs(bf16_value(a)) @ np.abs(bf16_value(b)).T))


@needs_onednn
@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("tb", [0, 1])
@pytest.mark.parametrize("packed", [False, True])
def test_u8s8_product_is_exact(M, N, K, tb, packed):
    rng = np.random.default_rng(M + 7 * N + 13 * K)
    top = 255 if INFO["vnni"] else 127      # without VNNI the engine's activations are 7-bit
    a = rng.integers(0, top + 1, (M, K)).astype(np.uint8)
    b = rng.integers(-127, 128, (N, K) if tb else (K, N)).astype(np.int8)
    w = _lowp.PackedWeight("int8", tb, N, K, K if tb else N) if packed else None
    got = _lowp.gemm_u8s8(a, b, tb=bool(tb), packed=w)
    ref = a.astype(np.int64) @ op(b.astype(np.int64), tb)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, ref)


@needs_onednn
def test_u8s8_extremes_stay_exact():
    # |sum| = K * 255 * 128: the largest the header promises is exact (K <= 65793), here at
    # the engine's widest K; with 7-bit activations where the CPU has no VNNI.
    K = 2048
    top = 255 if INFO["vnni"] else 127
    for av, bv in ((top, -128), (top, 127), (0, -128)):
        a = np.full((3, K), av, np.uint8)
        b = np.full((K, 5), bv, np.int8)
        np.testing.assert_array_equal(_lowp.gemm_u8s8(a, b), np.full((3, 5), K * av * bv))


@needs_onednn
def test_products_from_many_threads_at_once():
    rng = np.random.default_rng(11)
    a = [rng.integers(0, 128, (m, 512)).astype(np.uint8) for m in (1, 7, 33, 64)]
    b = rng.integers(-127, 128, (2048, 512)).astype(np.int8)
    packed = _lowp.PackedWeight("int8", 1, 2048, 512, 512)
    want = [x.astype(np.int64) @ b.T.astype(np.int64) for x in a]

    def work(i):
        for r in range(15):
            k = (i + r) % len(a)
            np.testing.assert_array_equal(_lowp.gemm_u8s8(a[k], b, tb=True, packed=packed),
                                          want[k])

    in_threads(work)
    assert packed.packs()[0] >= 1


@needs_onednn
@pytest.mark.parametrize("M", [1, 7, 33, 100])
@pytest.mark.parametrize("N", [20, 255, 256, 1000, 2049])
@pytest.mark.parametrize("tb", [0, 1])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_gemm_rows_split_over_helper_threads(M, N, tb, threads):
    # One row, or more than 32, runs as oneDNN's gemm with its columns shared between the
    # caller and the helper threads (N >= 256 and more than one thread): every split, uneven
    # ones included, gives the exact product, and bf16 (also with A transposed, as the
    # backward has it) stays within its bound.
    rng = np.random.default_rng(M + N + tb)
    K = 300
    top = 255 if INFO["vnni"] else 127
    a = rng.integers(0, top + 1, (M, K)).astype(np.uint8)
    b = rng.integers(-127, 128, (N, K) if tb else (K, N)).astype(np.int8)
    _lowp.set_threads(threads)
    try:
        for _ in range(3):
            got = _lowp.gemm_u8s8(a, b, tb=bool(tb))
            np.testing.assert_array_equal(got, a.astype(np.int64) @ op(b.astype(np.int64), tb))
        # The epilogue (the engine's dequantization) sees every column exactly once, after
        # its block is final, whichever thread computed it.
        got, counts = _lowp.gemm_u8s8(a, b, tb=bool(tb), count_blocks=True)
        np.testing.assert_array_equal(counts, np.ones(N, np.int32))
        np.testing.assert_array_equal(got, a.astype(np.int64) @ op(b.astype(np.int64), tb))
        if INFO["bf16"]:
            for ta in (0, 1):
                ab = bf16_bits(rng.standard_normal((K, M) if ta else (M, K)))
                bb = bf16_bits(rng.standard_normal((N, K) if tb else (K, N)))
                A, B = op(bf16_value(ab), ta), op(bf16_value(bb), tb)
                got = _lowp.gemm_bf16(ab, bb, ta=bool(ta), tb=bool(tb)).astype(np.float64)
                assert np.all(np.abs(got - A @ B) <= gamma(K) * (np.abs(A) @ np.abs(B)))
    finally:
        _lowp.set_threads(0)


@needs_onednn
def test_gemm_rows_from_many_threads_and_after_fork():
    # Several callers at once: one shares the helpers, the others run alone; all exact.  A
    # forked child has no helper threads and starts its own.
    rng = np.random.default_rng(5)
    b = rng.integers(-127, 128, (2048, 512)).astype(np.int8)
    rows = [rng.integers(0, 128, (m, 512)).astype(np.uint8) for m in (1, 1, 40, 1, 200)]
    want = [r.astype(np.int64) @ b.T.astype(np.int64) for r in rows]
    _lowp.set_threads(2)

    def work(i):
        for r in range(40):
            k = (i + r) % len(rows)
            np.testing.assert_array_equal(_lowp.gemm_u8s8(rows[k], b, tb=True), want[k])

    try:
        in_threads(work)
        if hasattr(os, "fork"):
            # This thread has led OpenMP teams where 200 rows run on a two-thread primitive
            # (AMX CPUs): the child must not wait for the parent's workers.
            in_fork(lambda: all(np.array_equal(_lowp.gemm_u8s8(r, b, tb=True), w)
                                for r, w in zip(rows, want)))
    finally:
        _lowp.set_threads(0)


@needs_onednn
def test_cache_is_bounded_and_reuses_primitives():
    # Primitives serve 2-32 rows (one row, and more than 32 save bf16 and 129+ int8 rows on
    # AMX CPUs, run oneDNN's gemm).
    entries0, created0 = _lowp.cache_stats()
    shapes = [(M, N) for N in (8, 9, 10, 11) for M in range(2, 33)]   # more than it holds
    for M, N in shapes:
        a = np.full((M, 40), 2, np.uint8)
        np.testing.assert_array_equal(_lowp.gemm_u8s8(a, np.ones((40, N), np.int8)),
                                      np.full((M, N), 80))
    entries, created = _lowp.cache_stats()
    assert entries <= 96 and created - created0 >= len(shapes) - 96
    # Asked first: asking about a shape a primitive serves (AMX CPUs) makes that primitive.
    gemm_rows = [M for M in (1, 33, 130) if runs_gemm("int8", M, 8, 40, tb=False)]
    assert 1 in gemm_rows
    _, before = _lowp.cache_stats()
    np.testing.assert_array_equal(_lowp.gemm_u8s8(np.full((32, 40), 1, np.uint8),
                                                  np.ones((40, 11), np.int8)),
                                  np.full((32, 11), 40))
    assert _lowp.cache_stats()[1] == before          # a cached shape makes no new primitive
    for M in gemm_rows:                              # the gemm rows make none
        np.testing.assert_array_equal(_lowp.gemm_u8s8(np.full((M, 40), 1, np.uint8),
                                                      np.ones((40, 8), np.int8)),
                                      np.full((M, 8), 40))
    assert _lowp.cache_stats()[1] == before


@needs_onednn
def test_engine_shapes_run_optimized_kernels():
    # A reference implementation ("ref:") would be correct but many times slower: the shapes
    # of a default-size step (forward at batch 1 and 256, and bf16's backward) must not get it.
    # Which products run oneDNN's gemm functions and which its matmul primitive: one row
    # always the gemm (a gemv), 2-32 rows the primitive, more the gemm; where there is AMX
    # (the gemm functions have no AMX kernels), bf16 above 32 rows and int8 above 128 rows
    # the primitive.
    assert runs_gemm("int8", 1, 2048, 512) and runs_gemm("int8", 1, 1024, 2048)
    assert not runs_gemm("int8", 8, 1024, 2048) and not runs_gemm("int8", 32, 1024, 2048)
    assert runs_gemm("int8", 64, 1024, 2048) and runs_gemm("int8", 128, 1024, 2048)
    assert runs_gemm("int8", 256, 1024, 2048) == (not INFO["amx"])
    if INFO["bf16"]:
        assert runs_gemm("bf16", 1, 1024, 2048) and not runs_gemm("bf16", 8, 1024, 2048)
        assert runs_gemm("bf16", 64, 1024, 2048) == (not INFO["amx"])
    shapes = [(1, 2048, 512, 0, 1), (256, 2048, 512, 0, 1), (256, 1024, 2048, 0, 1),
              (256, 20, 1024, 0, 0)]
    for M, N, K, ta, tb in shapes:
        assert not _lowp.impl("int8", M, N, K, tb=bool(tb)).startswith("ref")
    if INFO["bf16"]:
        backward = [(1024, 20, 256, 1, 0), (256, 1024, 20, 0, 1), (1024, 2048, 256, 1, 0),
                    (256, 2048, 1024, 0, 0), (2048, 512, 256, 1, 0)]
        for M, N, K, ta, tb in shapes + backward:
            name = _lowp.impl("bf16", M, N, K, ta=bool(ta), tb=bool(tb), packed=False)
            assert not name.startswith("ref"), (M, N, K, ta, tb, name)


@needs_onednn
def test_thread_budget_is_set_and_followed():
    _lowp.set_threads(1)
    assert _lowp.info()["threads"] == 1
    a = np.full((64, 512), 3, np.uint8)
    b = np.ones((512, 256), np.int8)
    np.testing.assert_array_equal(_lowp.gemm_u8s8(a, b), np.full((64, 256), 1536))
    _lowp.set_threads(0)
    assert _lowp.info()["threads"] >= 1


@needs_onednn
def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="kind"):
        _lowp.PackedWeight("int4", 1, 3, 4, 4)
    with pytest.raises(ValueError, match="shape"):
        _lowp.PackedWeight("int8", 1, 3, 4, 2)
    w = _lowp.PackedWeight("int8", 1, 3, 4, 4)
    with pytest.raises(ValueError, match="B has shape"):
        _lowp.gemm_u8s8(np.zeros((2, 4), np.uint8), np.zeros((4, 3), np.int8), tb=True)
    with pytest.raises(ValueError, match="packed does not describe B"):
        _lowp.gemm_u8s8(np.zeros((2, 4), np.uint8), np.zeros((4, 3), np.int8), packed=w)


def _run(code, **env):
    e = dict(os.environ)
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_import_does_not_load_onednn():
    out = _run("import aiva_cy, numpy as np\n"
               "net = aiva_cy.AIVANet(input_size=8, num_tools=3, hidden_size=16, "
               "spiking_size=12, seed=0)\n"
               "net.predict_proba(np.ones((2, 8), np.float32))\n"
               "print(any('dnnl' in line for line in open('/proc/self/maps')))"
               if sys.platform.startswith("linux") else "print(False)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_missing_library_names_what_to_install():
    code = ("import aiva_cy._lowp as lp\n"
            "lp._library_path = lambda: None\n"
            "from aiva_cy import AIVANet, blas_info\n"
            "info = blas_info()\n"
            "low = info['precisions']\n"
            "assert not low['int8']['available'] and not low['bfloat16']['available'], info\n"
            "assert 'aiva_cy[precision]' in low['int8']['missing'], info\n"
            "assert low['int8']['native'] in (True, False, None), info\n"
            "assert info['precision_auto'] == 'float32'\n"
            "for p in ('int8', 'bfloat16'):\n"
            "    try:\n"
            "        AIVANet(input_size=4, num_tools=2, hidden_size=6, spiking_size=5, "
            "precision=p)\n"
            "    except ImportError as exc:\n"
            "        print(exc)\n"
            "print(AIVANet(input_size=4, num_tools=2, hidden_size=6, spiking_size=5, "
            "precision='auto')._engine.effective_precision)\n")
    out = _run(code)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and all('pip install "aiva_cy[precision]"' in l for l in lines[:2])
    assert lines[2] == "float32"


@pytest.mark.skipif(INFO is not None, reason="oneDNN is installed: the simulation above "
                                               "covers its absence")
def test_without_the_extra_reduced_precision_says_what_to_install():
    # Where the [precision] extra is not installed for real (CI's floor step): the errors,
    # blas_info and "auto" are what the README promises.
    import aiva_cy
    from aiva_cy import AIVANet
    for p in ("bfloat16", "int8"):
        with pytest.raises(ImportError, match=r'pip install "aiva_cy\[precision\]"'):
            AIVANet(input_size=4, num_tools=2, hidden_size=6, spiking_size=5, precision=p)
        net = AIVANet(input_size=4, num_tools=2, hidden_size=6, spiking_size=5)
        with pytest.raises(ImportError, match="aiva_cy"):
            net.precision = p
        assert net.precision == "float32"
        entry = aiva_cy.blas_info()["precisions"][p]
        assert entry["available"] is False and "aiva_cy[precision]" in entry["missing"]
    assert aiva_cy.blas_info()["precision_auto"] == "float32"
    auto = AIVANet(input_size=4, num_tools=2, hidden_size=6, spiking_size=5, precision="auto")
    assert auto.precision == "auto" and auto._engine.effective_precision == "float32"


def test_unopenable_library_says_why():
    out = _run("from aiva_cy import _lowp\n"
               "try:\n    _lowp.open_provider()\nexcept ImportError as exc:\n    print(exc)\n",
               AIVA_CY_ONEDNN="/nonexistent/libdnnl.so.3")
    assert out.returncode == 0, out.stderr
    assert "/nonexistent/libdnnl.so.3" in out.stdout and "aiva_cy[precision]" in out.stdout


@needs_onednn
def test_without_vnni_activations_are_seven_bit_and_bf16_is_refused():
    # oneDNN's own switch makes it dispatch as on an AVX-512 CPU without VNNI or BF16.
    code = ("import numpy as np\nfrom aiva_cy import _lowp\n"
            "i = _lowp.info()\nprint(i['isa'], i['vnni'], i['bf16'], _lowp.quantization())\n"
            "a = np.full((3, 2048), 255, np.uint8); b = np.full((2048, 5), -128, np.int8)\n"
            "print(int(_lowp.gemm_u8s8(a, b)[0, 0]) == 2048 * 255 * -128)\n"
            "a = np.full((3, 2048), 127, np.uint8)\n"
            "print(int(_lowp.gemm_u8s8(a, b)[0, 0]) == 2048 * 127 * -128)\n"
            "try:\n    _lowp.require('bfloat16')\nexcept RuntimeError as exc:\n    print(exc)\n")
    out = _run(code, ONEDNN_MAX_CPU_ISA="AVX512_CORE")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "avx512_core False False (63, 64)"
    # VPMADDUBSW saturates 255 * -128 pairs (this is why): 7-bit activations never do.
    assert lines[1] == "False" and lines[2] == "True"
    assert "AVX512-BF16 or AMX" in lines[3] and "avx512_core" in lines[3]


@needs_onednn
@pytest.mark.parametrize("isa", ["AVX512_CORE", "AVX2"])
def test_seven_bit_products_are_exact_on_every_path_without_vnni(isa):
    # As on CPUs without VNNI: the engine's 7-bit activations (q + 64, |q| <= 63) stay exact
    # through every path -- the gemv (1 row), the primitive (7) and the split gemm (40) --
    # on the worst weights (-128) and on random ones, with the helper threads in use.
    code = ("import numpy as np\nfrom aiva_cy import _lowp\n_lowp.set_threads(2)\n"
            "rng = np.random.default_rng(0)\nok = []\n"
            "for M in (1, 7, 40):\n"
            "    for a in (np.full((M, 2048), 127, np.uint8),\n"
            "              rng.integers(1, 128, (M, 2048)).astype(np.uint8)):\n"
            "        for b in (np.full((300, 2048), -128, np.int8),\n"
            "                  rng.integers(-128, 128, (300, 2048)).astype(np.int8)):\n"
            "            want = a.astype(np.int64) @ b.T.astype(np.int64)\n"
            "            ok.append(bool((_lowp.gemm_u8s8(a, b, tb=True) == want).all()))\n"
            "print(_lowp.info()['vnni'], all(ok), len(ok))\n")
    out = _run(code, ONEDNN_MAX_CPU_ISA=isa)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "12"], out.stdout


@needs_onednn
def test_idle_openmp_workers_sleep_unless_the_user_chose():
    # libgomp's default spinning made two pools fight on a busy machine: oneDNN's libgomp is
    # loaded with OMP_WAIT_POLICY=PASSIVE, set only while it loads.
    code = ("import os\nfrom aiva_cy import _lowp\n_lowp.open_provider()\n"
            "print(_lowp.info()['omp_wait_policy'])\nprint(os.environ.get('OMP_WAIT_POLICY'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    if sys.platform.startswith("linux"):
        assert out.stdout.split("\n")[:2] == ["passive (set by aiva_cy)", "None"], out.stdout
    out = _run(code, OMP_WAIT_POLICY="ACTIVE")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["ACTIVE", "ACTIVE"]


@needs_onednn
@pytest.mark.skipif(not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
                    reason="Linux threads' affinity, on two CPUs or more")
def test_a_helper_on_the_callers_cpu_moves_off_and_keeps_its_affinity():
    # Right after a product (the helpers spin then), every other thread is put on this
    # thread's CPU, with its affinity given back at once so that it may leave.  When the
    # next product finds a helper still there, the helper moves off by narrowing its
    # affinity for a moment (in a few rounds only: the kernel usually moves it first; a build
    # that did not give the affinity back failed here in 4 of 4 runs of 300 rounds).  After
    # every product each thread allows again the CPUs it allowed before; all stay exact.
    def masks(tids):
        out = {}
        for tid in tids:
            try:
                out[tid] = os.sched_getaffinity(tid)
            except OSError:                        # a thread that ended meanwhile
                pass
        return out

    rng = np.random.default_rng(9)
    b = rng.integers(-127, 128, (1024, 2048)).astype(np.int8)
    a = rng.integers(0, 128, (1, 2048)).astype(np.uint8)
    want = a.astype(np.int64) @ b.T.astype(np.int64)
    me = threading.get_native_id()
    mine = os.sched_getaffinity(0)
    cpu = min(mine)
    _lowp.set_threads(2)
    try:
        _lowp.gemm_u8s8(a, b, tb=True)            # the helpers exist from here on
        time.sleep(0.01)                          # and no helper is half way through a move
        others = masks(int(t) for t in os.listdir("/proc/self/task") if int(t) != me)
        os.sched_setaffinity(0, {cpu})
        for _ in range(300):
            for tid, allowed in others.items():   # the masks from before, never a moving one's
                try:
                    os.sched_setaffinity(tid, {cpu})
                    os.sched_setaffinity(tid, allowed)
                except OSError:
                    pass
            for _ in range(3):
                np.testing.assert_array_equal(_lowp.gemm_u8s8(a, b, tb=True), want)
                # A helper may be moving at any moment, even after the product returned (a
                # late one finds every part taken): its mask must come back, not stay.
                deadline = time.monotonic() + 5.0
                while True:
                    now = masks(others)
                    if now == {t: others[t] for t in now} or time.monotonic() > deadline:
                        break
                    time.sleep(0.001)
                assert now == {t: others[t] for t in now}
    finally:
        os.sched_setaffinity(0, mine)
        _lowp.set_threads(0)
