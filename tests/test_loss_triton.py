"""The Triton KD-loss kernels against the float64 oracle.

Triton decides at import whether kernels run compiled or interpreted, so without a GPU these tests run
in a child pytest with ``TRITON_INTERPRET=1`` set before triton is imported (the interpreter executes
each program instance with numpy on CPU tensors). With CUDA they run directly on the GPU.
The interpreter costs about a millisecond per Triton op per program, so shapes here are small: both
layouts (single-block and online) are still covered, the online one with blocks forced to 32 columns
so that its cross-block rescaling runs; the full C x B grid runs on the C++ backend (test_loss.py),
which implements the same numerics.

On a GPU with ``KDPRUNE_GPU_FULL=1`` (``make gpu-check`` sets it) every case runs at its full shape
instead: batch 8199 (the benchmark's 8192 plus a partial program), the online layout at its real
4096-column blocks for C = 32000, 50257 and 128256, and the CUDA-graph capture at the benchmark's
shapes. The float64 oracle (with autograd) then dominates the time, so C >= 32000 runs at smaller
batches: 8192 for 32000, 2048 for 128256 (about 30 GB of oracle tensors), 512 in the dtype and
reduction grids.
"""
import math
import os
import subprocess
import sys

import pytest
import torch

ON_GPU = torch.cuda.is_available()
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
FULL = ON_GPU and os.environ.get("KDPRUNE_GPU_FULL") == "1"
FULL_B = 8199


def size(small, full):
    """The interpreter's small shape, or with ``KDPRUNE_GPU_FULL=1`` on a GPU the full one."""
    return full if FULL else small

pytest.importorskip("triton")

if not (ON_GPU or INTERPRETED):

    def test_triton_kernels_under_the_interpreter():
        env = dict(os.environ, TRITON_INTERPRET="1")
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__],
                              env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]

    def test_kernels_compile_for_h100():
        """The interpreter does not type-check like the compiler: build every kernel variant for sm_90
        with triton's bundled ptxas, as the GPU will (no GPU needed)."""
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        import triton

        from kdprune.kernels import kd_loss as K

        target = GPUTarget("cuda", 90, 32)
        row_args = {"S": "*bf16", "T": "*fp16", "Y": "*i64", "G": "*bf16", "LOSS": "*fp32", "CE": "*fp32",
                    "KL": "*fp32", "EL2N": "*fp32", "DENOM": "*fp32", "B": "i32", "C": "i32", "stride_s": "i32", "stride_t": "i32",
                    "stride_g": "i32", "inv_t": "fp32", "alpha": "fp32", "kl_weight": "fp32", "eps": "fp32",
                    "ignore_index": "i32"}
        flags = {"SAME_T": False, "HAS_GRAD": True, "SMOOTHING": True, "HAS_DENOM": True}
        builds = [
            (K._kd_online_kernel, row_args, dict(flags, BLOCK_C=4096), 8),
            (K._kd_online_kernel, row_args, dict(flags, BLOCK_C=4096, SAME_T=True, SMOOTHING=False), 8),
            (K._kd_single_block_kernel, row_args, dict(flags, ROWS=2, BLOCK_C=1024), 4),
            (K._kd_single_block_kernel, row_args, dict(flags, ROWS=64, BLOCK_C=32, HAS_GRAD=False), 4),
            (K._count_kernel, {"Y": "*i64", "DENOM": "*fp32", "B": "i32", "ignore_index": "i32"}, {"BLOCK": 1024}, 4),
            (K._finalize_kernel, {"LOSS_ROWS": "*fp32", "OUT": "*fp32", "DENOM": "*fp32", "B": "i32"},
             {"HAS_DENOM": True, "BLOCK": 1024}, 4),
            (K._scale_kernel, {"G": "*bf16", "GO": "*fp32", "C": "i32", "stride_g": "i32"},
             {"PER_ROW": True, "BLOCK": 4096}, 4),
        ]
        for kernel, args, consts, warps in builds:
            sig = dict(args, **{k: "constexpr" for k in consts})
            compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts), target=target,
                                      options={"num_warps": warps})
            assert compiled.asm["cubin"], kernel

else:
    import numpy as np

    from kdprune.kernels.kd_loss import KDLossConfig, kd_loss_forward, kd_loss_scale_, pick_config
    from kdprune.loss import KDLoss, KDOutput, kd_loss, kd_loss_ref
    from kdprune.loss.testing import Case, check, failures, run

    DEVICE = "cuda" if ON_GPU else "cpu"
    ONLINE_SMALL = KDLossConfig(single_block=False, block_c=32, rows=1, num_warps=4)

    @pytest.fixture(autouse=True)
    def _quiet_numpy():
        # masked lanes of the interpreter compute -inf - -inf and the like; the kernel discards them
        with np.errstate(all="ignore"):
            yield

    def triton_loss(*args, **kw):
        return kd_loss(*args, kernel="triton", **kw)

    class _Forced(torch.autograd.Function):
        """The launcher with a forced layout (for the online kernel at small C) and its backward."""

        @staticmethod
        def forward(ctx, z, t, y, config, alpha, temperature, label_smoothing, ignore_index, code):
            grad = torch.empty_like(z)
            loss, ce, kl, el2n = kd_loss_forward(z, t, y, grad, alpha, temperature, label_smoothing, ignore_index,
                                                 code, config)
            ctx.save_for_backward(grad)
            ctx.mark_non_differentiable(ce, kl, el2n)
            return loss, ce, kl, el2n

        @staticmethod
        def backward(ctx, grad_loss, *_):
            (grad,) = ctx.saved_tensors
            kd_loss_scale_(grad, grad_loss)
            return (grad,) + (None,) * 8

    def with_config(config):
        def fn(z, t, y, *, alpha, temperature, reduction, ignore_index, label_smoothing):
            code = {"none": 0, "mean": 1, "sum": 2}[reduction]
            return KDOutput(*_Forced.apply(z, t, y, config, alpha, temperature, label_smoothing, ignore_index, code))
        return fn

    def assert_ok(case, fn=triton_loss):
        bad = failures(check(case, fn, device=DEVICE))
        assert not bad, f"{case}: " + "; ".join(bad)

    # C covers one row per warp lane (2), several rows per program (10, 100), one row per program
    # (1271, odd); B = 7 leaves a partial program; the online layout runs at C = 100 with 32-column
    # blocks (4 blocks, a partial last one) and at C = 32000 with its real 4096-column blocks.
    @pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
    @pytest.mark.parametrize("T", [1.0, 4.0])
    @pytest.mark.parametrize("C", [2, 10, 100, 1271] + size([], [4096]))
    def test_single_block_layout(C, T, alpha):
        assert pick_config(C).single_block
        assert_ok(Case(size(7, FULL_B), C, temperature=T, alpha=alpha, label_smoothing=0.1 if alpha == 0.5 else 0.0,
                       seed=C))

    @pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
    @pytest.mark.parametrize("T", [1.0, 4.0])
    def test_online_layout_small_blocks(T, alpha):
        assert_ok(Case(size(7, FULL_B), size(100, 1000), temperature=T, alpha=alpha,
                       label_smoothing=0.1 if alpha == 0.5 else 0.0), with_config(ONLINE_SMALL))

    @pytest.mark.parametrize("C", [32000] + size([], [50257, 128256]))
    def test_online_layout_large_c(C):
        assert not pick_config(C).single_block
        B = size(2, {32000: 8192, 50257: 1024, 128256: 2048}[C])
        assert_ok(Case(B, C, ignore_frac=size(0.0, 0.1), label_smoothing=0.1))

    # every student x teacher dtype pair, each layout once
    @pytest.mark.parametrize("sdt", [torch.float32, torch.bfloat16, torch.float16])
    @pytest.mark.parametrize("tdt", [torch.float32, torch.bfloat16, torch.float16])
    def test_dtypes(sdt, tdt):
        case = Case(size(5, FULL_B), size(50, 1271), student_dtype=sdt, teacher_dtype=tdt, label_smoothing=0.1)
        assert_ok(case)
        if FULL:  # the online layout with its real blocks
            assert_ok(Case(512, 32000, student_dtype=sdt, teacher_dtype=tdt, label_smoothing=0.1))
        else:
            assert_ok(case, with_config(ONLINE_SMALL))

    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    def test_reductions_with_grad_output(reduction):
        assert_ok(Case(size(9, FULL_B), size(40, 1000), reduction=reduction))
        if FULL:
            assert_ok(Case(512, 32000, reduction=reduction))

    @pytest.mark.parametrize("config", [None, ONLINE_SMALL], ids=["single", "online"])
    def test_edge_rows(config):
        """Student == teacher (kl 0), teacher -inf entries and a teacher row all -inf, a student row
        all -inf (zero gradient), an ignored row, a confident bf16-like row, +100 shift. Full: the
        single block at its largest C, the online layout with its real blocks."""
        B, C = 6, 70
        if FULL:
            C, config = (4000, None) if config is None else (32000, None)
        g = torch.Generator().manual_seed(0)
        z = torch.randn(B, C, generator=g) * 3
        t = torch.randn(B, C, generator=g) * 3
        t[0] = z[0]
        t[1, ::4] = float("-inf")
        t[2] = float("-inf")
        z[3] = float("-inf")
        z[5, 7] = math.log(0.999 * (C - 1) / 0.001)
        z[5, :7] = 0.0
        z[5, 8:] = 0.0
        y = torch.tensor([1, 2, 3, 4, -100, 7])
        kw = dict(alpha=0.6, temperature=2.0, reduction="none", ignore_index=-100, label_smoothing=0.0)
        fn = triton_loss if config is None else with_config(config)
        for shift in (0.0, 100.0):
            out, dz = run(fn, (z + shift).to(DEVICE), (t + shift).to(DEVICE), y.to(DEVICE), kw, torch.ones(B, device=DEVICE))
            ref, dz64 = run(kd_loss_ref, (z + shift).double(), (t + shift).double(), y, kw, torch.ones(B, dtype=torch.float64))
            out, dz = [x.cpu() if hasattr(x, "cpu") else x for x in out], dz.cpu()
            assert not dz.isnan().any()
            assert (dz[3] == 0).all() and (dz[4] == 0).all()
            assert out[2][0] < 1e-5 and out[2][2] == 0  # kl: student == teacher, no teacher
            assert out[1][3] == math.inf and out[3][3] == 1.0  # ce, el2n of the dead row
            for got, want in zip(out, ref):
                torch.testing.assert_close(got.double(), want.double(), rtol=2e-5, atol=2e-4 if shift else 2e-6)
            torch.testing.assert_close(dz.double(), dz64, rtol=1e-4, atol=1e-6)

    def test_all_ignored_batch():
        B, C = size((4, 20), (8192, 32000))
        z = torch.randn(B, C, device=DEVICE, requires_grad=True)
        out = triton_loss(z, torch.randn(B, C, device=DEVICE), torch.full((B,), -100, device=DEVICE),
                          alpha=0.5, temperature=3.0)
        (dz,) = torch.autograd.grad(out.loss, z)
        assert out.loss.item() == 0.0 and (dz == 0).all()

    @pytest.mark.parametrize("C", [10] + size([], [32000]))
    def test_out_of_range_label_gives_nan_not_a_crash(C):
        # no host sync is allowed, so the Triton backend marks the row instead of raising
        B = size(3, FULL_B)
        z, t = torch.randn(B, C, device=DEVICE), torch.randn(B, C, device=DEVICE)
        y = torch.arange(B, device=DEVICE) % C
        y[1] = C
        out = triton_loss(z, t, y, alpha=0.5, temperature=2.0, reduction="none")
        others = torch.ones(B, dtype=torch.bool, device=DEVICE)
        others[1] = False
        assert out.loss[1].isnan() and out.loss[others].isfinite().all()

    def test_inplace_and_a_second_backward():
        case = Case(size(8, FULL_B), size(30, 1000))
        z, t, y = case.inputs(DEVICE)
        _, expected = run(triton_loss, z, t, y, case.kwargs())
        leaf = z.clone().requires_grad_()
        out = triton_loss(leaf * 1.0, t, y, inplace=True, **case.kwargs())
        out.loss.backward(torch.tensor(0.7, device=DEVICE))
        torch.testing.assert_close(leaf.grad, expected)
        z2 = z.clone().requires_grad_()
        out = triton_loss(z2, t, y, **case.kwargs())
        torch.autograd.grad(out.loss, z2, retain_graph=True)
        with pytest.raises(RuntimeError, match="second backward"):
            torch.autograd.grad(out.loss, z2)

    def test_backward_with_grad_output_one_leaves_the_buffer_alone():
        case = Case(size(6, FULL_B), size(30, 1000), reduction="none")
        z, t, y = case.inputs(DEVICE)
        z = z.requires_grad_()
        out = triton_loss(z, t, y, **case.kwargs())
        go = torch.ones(case.B, device=DEVICE)
        go[2] = 3.0
        (dz,) = torch.autograd.grad(out.loss, z, go)
        ref = kd_loss_ref(z.double(), t.double(), y, **case.kwargs())
        (dz64,) = torch.autograd.grad(ref.loss, z, go.double())
        torch.testing.assert_close(dz, dz64.float(), rtol=1e-5, atol=1e-7)

    def test_torch_compile_fullgraph_around_kdloss():
        case = Case(size(12, 4096), size(40, 32000), label_smoothing=0.1)
        z, t, y = case.inputs(DEVICE)
        module = KDLoss(alpha=0.5, temperature=4.0, label_smoothing=0.1, kernel="triton")
        # the custom op is opaque to every compile backend; aot_eager keeps the CPU-interpreter run short
        compiled = torch.compile(module, fullgraph=True, backend="inductor" if ON_GPU else "aot_eager")
        out, dz = run(lambda z_, t_, y_, **_: compiled(z_, t_, y_), z, t, y, {})
        ref, dz_ref = run(triton_loss, z, t, y, case.kwargs())
        torch.testing.assert_close(out.loss, ref.loss)
        torch.testing.assert_close(out.kl, ref.kl)
        torch.testing.assert_close(dz, dz_ref)

    # one small case; with KDPRUNE_GPU_FULL the benchmark's shapes in bf16 (both layouts) and a per-row
    # grad_output, so that the backward's scale kernel does its work inside the graph too
    GRAPH_CASES = [(64, 5000, torch.float32, "mean")] + size([], [
        (8192, 1000, torch.bfloat16, "mean"), (8192, 32000, torch.bfloat16, "mean"),
        (2048, 128256, torch.bfloat16, "mean"), (8192, 32000, torch.bfloat16, "none")])

    @pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a GPU (CI has none; `make gpu-check` runs this)")
    @pytest.mark.parametrize("B, C, dtype, reduction", GRAPH_CASES)
    def test_cuda_graph_capture_and_replay(B, C, dtype, reduction):
        # no host sync anywhere: forward + backward capture into one graph and replay to the eager result
        case = Case(B, C, student_dtype=dtype, teacher_dtype=dtype, reduction=reduction)
        z, t, y = case.inputs("cuda")
        z = z.requires_grad_()
        kw = case.kwargs()
        go = None if reduction != "none" else torch.linspace(0.5, 1.5, B, device="cuda")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: Triton compiles outside the capture
                z.grad = None
                kd_loss(z, t, y, **kw).loss.backward(go)
        torch.cuda.current_stream().wait_stream(side)
        expected = z.grad.clone()
        z.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = kd_loss(z, t, y, **kw)
            out.loss.backward(go)
        graph.replay()
        torch.cuda.synchronize()
        ref = kd_loss(z.detach(), t, y, **kw)
        torch.testing.assert_close(out.loss, ref.loss)
        torch.testing.assert_close(z.grad, expected)
