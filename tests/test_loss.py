"""The fused KD loss: the C++ backend and the torch reference against the float64 oracle, the edge
cases of the contract, errors, gradcheck, torch.compile. (The Triton kernel: tests/test_loss_triton.py.)
"""
import math

import pytest
import torch

import kdprune
from kdprune.errors import ConfigError
from kdprune.loss import KDLoss, KDOutput, alpha_for_fraction, kd_loss, kd_loss_ref
from kdprune.loss import alpha as alpha_mod
from kdprune.loss.testing import Case, check, failures, max_err, run



def cpu_loss(*args, **kw):
    return kd_loss(*args, kernel="cpu", **kw)


def assert_ok(case, fn=cpu_loss, factor=4.0):
    bad = failures(check(case, fn, factor=factor))
    assert not bad, f"{case}: " + "; ".join(bad)


# The acceptance grid of the issue: every C (2 .. 32000, odd 1271 included), batch 1 / 7 / 289,
# T in {1, 4} (T == 1 shares the student's exps), alpha in {0, 0.5, 1}, 30% ignored labels, in fp32.
# One corner is thinned: C = 32000 x B = 289 (9M logits; the float64 oracle with autograd costs
# seconds per case) runs once, at T = 4 and alpha = 0.5 (both terms, both softmaxes); T = 1 and
# alpha 0 / 1 are covered at every other shape. 103 cases.
GRID = [(C, B, T, a) for C in (2, 10, 100, 1000, 1271, 32000) for B in (1, 7, 289) for T in (1.0, 4.0)
        for a in (0.0, 0.5, 1.0) if not (C == 32000 and B == 289 and (a, T) != (0.5, 4.0))]


@pytest.mark.parametrize("C, B, T, alpha", GRID)
def test_cpu_matches_oracle_grid(C, B, T, alpha):
    assert_ok(Case(B, C, temperature=T, alpha=alpha, seed=C + B))


# dtypes: every student x teacher pair the kernels take, at one small and one odd-large C; here
# the gradient's bf16/fp16 rounding dominates, and tolerances follow it (see kdprune.loss.testing).
@pytest.mark.parametrize("C", [100, 1271])
@pytest.mark.parametrize("sdt", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tdt", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_dtypes(C, sdt, tdt):
    assert_ok(Case(33, C, student_dtype=sdt, teacher_dtype=tdt, label_smoothing=0.1))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cpu_reductions_and_smoothing(reduction, eps):
    assert_ok(Case(57, 300, reduction=reduction, label_smoothing=eps, temperature=2.0))


def test_student_equals_teacher_has_zero_kl():
    z = torch.randn(64, 500) * 4
    y = torch.randint(0, 500, (64,))
    for backend in ("cpu", "torch"):
        out = kd_loss(z, z.clone(), y, alpha=1.0, temperature=3.0, kernel=backend)
        assert out.kl.abs().max() < 1e-6, backend
        assert out.loss.abs() < 1e-5, backend


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_shift_invariance(T):
    # +100 on every logit leaves both softmaxes, hence every output and the gradient, unchanged
    case = Case(31, 1000, temperature=T, label_smoothing=0.1, seed=3)
    z, t, y = case.inputs()
    base, g0 = run(cpu_loss, z, t, y, case.kwargs())
    shifted, g1 = run(cpu_loss, z + 100, t + 100, y, case.kwargs())
    for name in KDOutput._fields:
        # fp32 holds z + 100 to about 8e-6: the outputs may move by that much, no more
        assert max_err(getattr(shifted, name), getattr(base, name)) < 2e-4, name
    assert max_err(g1, g0) < 1e-5


def test_confident_bf16_rows_keep_their_digits():
    # p_y = 0.999: 1 - p_y and -log p_y must come from the other classes' mass, not from 1 - p_y
    B, C = 16, 1000
    y = torch.arange(B) * 7
    z = torch.zeros(B, C)
    z[torch.arange(B), y] = math.log(0.999 * (C - 1) / 0.001)
    z = z.bfloat16()
    t = z.clone()
    out, dz = run(cpu_loss, z, t, y, dict(alpha=0.0, temperature=1.0))
    oracle, dz64 = run(kd_loss_ref, z.double(), t.double(), y, dict(alpha=0.0, temperature=1.0))
    torch.testing.assert_close(out.ce, oracle.ce, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.el2n, oracle.el2n, rtol=1e-5, atol=0)
    # the gradient at y is -(1 - p_y) / B = -1e-3 / 16: exact to bf16's 3 digits
    torch.testing.assert_close(dz[torch.arange(B), y].double(), dz64[torch.arange(B), y], rtol=8e-3, atol=0)


def test_teacher_neg_inf_contributes_zero():
    B, C = 8, 50
    z, t = torch.randn(B, C), torch.randn(B, C)
    t[:, ::3] = float("-inf")
    t[0, :] = float("-inf")  # a teacher row with no distribution at all: kl = 0
    t[0, 0] = float("-inf")
    y = torch.randint(0, C, (B,))
    for backend in ("cpu", "torch"):
        out, dz = run(lambda *a, **k: kd_loss(*a, kernel=backend, **k), z, t, y, dict(alpha=0.7, temperature=2.0))
        assert torch.isfinite(out.loss) and torch.isfinite(dz).all() and torch.isfinite(out.kl).all(), backend
        assert out.kl[0] == 0
    oracle, dz64 = run(kd_loss_ref, z.double(), t.double(), y, dict(alpha=0.7, temperature=2.0))
    got, dz = run(cpu_loss, z, t, y, dict(alpha=0.7, temperature=2.0))
    torch.testing.assert_close(got.kl, oracle.kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dz.double(), dz64, rtol=1e-5, atol=1e-7)


def test_all_neg_inf_student_row_has_zero_gradient():
    B, C = 6, 40
    z, t = torch.randn(B, C), torch.randn(B, C)
    z[2] = float("-inf")
    z[4, :10] = float("-inf")  # partly -inf: those classes get probability 0
    y = torch.randint(10, C, (B,))
    grads = {}
    for backend in ("cpu", "torch"):
        out, dz = run(lambda *a, **k: kd_loss(*a, kernel=backend, **k), z, t, y,
                      dict(alpha=0.5, temperature=2.0, reduction="none"), torch.ones(B))
        assert not dz.isnan().any(), backend
        assert (dz[2] == 0).all(), backend
        assert out.ce[2] == math.inf and out.kl[2] == math.inf and out.el2n[2] == 1.0, backend
        # row 4: the student gives 0 where the teacher has mass, so KL is inf, yet the gradient is the
        # finite a T (p_s - p_t) there
        assert out.kl[4] == math.inf and torch.isfinite(out.loss[[0, 1, 3, 5]]).all(), backend
        grads[backend] = dz
    torch.testing.assert_close(grads["cpu"], grads["torch"])


def test_all_ignored_batch_is_zero_with_zero_grad():
    z, t = torch.randn(5, 30, requires_grad=True), torch.randn(5, 30)
    y = torch.full((5,), -100)
    for backend in ("cpu", "torch"):
        out = kd_loss(z, t, y, alpha=0.5, temperature=4.0, kernel=backend)
        assert out.loss.item() == 0.0
        (dz,) = torch.autograd.grad(out.loss, z)
        assert (dz == 0).all() and (out.ce == 0).all() and (out.el2n == 0).all()


def test_custom_ignore_index_and_int32_labels():
    case = Case(40, 20, ignore_index=7, ignore_frac=0.0)
    z, t, y = case.inputs()
    y[::3] = 7
    out = kd_loss(z, t, y.int(), kernel="cpu", **case.kwargs())
    ref = kd_loss_ref(z.double(), t.double(), y, **case.kwargs())
    torch.testing.assert_close(out.loss.double(), ref.loss, rtol=1e-5, atol=1e-6)
    assert (out.ce[::3] == 0).all()


def test_outputs_are_detached_fp32():
    z = torch.randn(4, 9, dtype=torch.bfloat16, requires_grad=True)
    out = kd_loss(z, torch.randn(4, 9), torch.arange(4), alpha=0.5, temperature=2.0, kernel="cpu")
    for v in (out.ce, out.kl, out.el2n):
        assert v.dtype == torch.float32 and v.shape == (4,) and not v.requires_grad
    assert out.loss.dtype == torch.float32 and out.loss.requires_grad


def test_no_grad_and_a_second_backward():
    z, t, y = Case(10, 50).inputs()
    with torch.no_grad():
        a = kd_loss(z, t, y, alpha=0.5, temperature=2.0, kernel="cpu")
    b = kd_loss(z.requires_grad_(), t, y, alpha=0.5, temperature=2.0, kernel="cpu")
    assert a.loss == b.loss.detach()
    torch.autograd.grad(b.loss, z, retain_graph=True)
    # the buffer was scaled in place and handed on: a second backward must fail loudly, not compound
    with pytest.raises(RuntimeError, match="second backward"):
        torch.autograd.grad(b.loss, z)


def test_inplace_writes_the_gradient_into_the_logits():
    case = Case(20, 64)
    z, t, y = case.inputs()
    _, expected = run(cpu_loss, z, t, y, case.kwargs())
    leaf = z.clone().requires_grad_()
    logits = leaf * 1.0  # a non-leaf, as a model's output is
    out = kd_loss(logits, t, y, kernel="cpu", inplace=True, **case.kwargs())
    out.loss.backward(torch.tensor(0.7))
    torch.testing.assert_close(leaf.grad, expected)


def test_non_contiguous_inputs():
    case = Case(12, 40)
    z, t, y = case.inputs()
    zt, tt = z.t().contiguous().t(), t.t().contiguous().t()  # same values, column-major
    assert not zt.is_contiguous()
    out, dz = run(cpu_loss, zt, tt, y, case.kwargs())
    ref, dz_ref = run(cpu_loss, z, t, y, case.kwargs())
    torch.testing.assert_close(out.loss, ref.loss)
    torch.testing.assert_close(dz, dz_ref)
    with pytest.raises(ValueError, match="must then be contiguous"):
        kd_loss(zt, tt, y, kernel="cpu", inplace=True, **case.kwargs())


def test_auto_backend_on_cpu_is_the_extension():
    from kdprune.loss.function import resolve_backend

    assert resolve_backend("auto", torch.device("cpu")) == "cpu"
    with pytest.raises(ConfigError, match="CUDA"):
        resolve_backend("triton", torch.device("cpu"))
    with pytest.raises(ConfigError, match="kernel must be"):
        resolve_backend("fast", torch.device("cpu"))


def test_float64_goes_to_the_reference():
    z, t, y = Case(5, 7).inputs()
    with pytest.raises(ValueError, match="kernel='torch'"):
        kd_loss(z.double(), t.double(), y, alpha=0.5, temperature=2.0, kernel="cpu")
    out = kd_loss(z.double(), t.double(), y, alpha=0.5, temperature=2.0)  # auto: the reference
    assert out.loss.dtype == torch.float64
    assert out.loss == kd_loss_ref(z.double(), t.double(), y, alpha=0.5, temperature=2.0).loss


@pytest.mark.parametrize("kwargs, match", [
    (dict(alpha=1.5), "alpha must be in"),
    (dict(alpha=-0.1), "alpha must be in"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(temperature=-1.0), "temperature must be > 0"),
    (dict(label_smoothing=1.5), "label_smoothing"),
    (dict(reduction="avg"), "reduction must be"),
    (dict(alpha="auto"), "needs fraction="),
    (dict(alpha="best"), "or 'auto'"),
])
def test_bad_settings_raise_clearly(kwargs, match):
    z, t, y = Case(3, 5).inputs()
    args = dict(alpha=0.5, temperature=2.0) | kwargs
    with pytest.raises(ConfigError, match=match):
        kd_loss(z, t, y, **args)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_bad_shapes_and_labels_raise_clearly(backend):
    z, t, y = Case(4, 6, ignore_frac=0.0).inputs()
    kw = dict(alpha=0.5, temperature=2.0, kernel=backend)
    with pytest.raises(ValueError, match="teacher logits must have the student's shape"):
        kd_loss(z, t[:, :5], y, **kw)
    with pytest.raises(ValueError, match=r"labels must be \[B\]"):
        kd_loss(z, t, y[:3], **kw)
    with pytest.raises(ValueError, match=r"student logits must be \[B, C\]"):
        kd_loss(z[0], t[0], y, **kw)
    for bad in (6, -1):
        y2 = y.clone()
        y2[2] = bad
        with pytest.raises(ValueError, match=f"label {bad} at row 2 is outside"):
            kd_loss(z, t, y2, **kw)


def test_gradcheck_float64_reference_and_closed_form():
    # the oracle's autograd gradient against finite differences, then the contract's closed form
    # (which the kernels implement) against the oracle, both in float64
    torch.manual_seed(0)
    B, C, T, a, eps = 5, 7, 2.5, 0.3, 0.1
    z = torch.randn(B, C, dtype=torch.float64, requires_grad=True)
    t = torch.randn(B, C, dtype=torch.float64)
    y = torch.tensor([0, 3, -100, 6, 2])
    for reduction in ("mean", "sum", "none"):
        f = lambda z_: kd_loss_ref(z_, t, y, alpha=a, temperature=T, label_smoothing=eps, reduction=reduction).loss
        assert torch.autograd.gradcheck(f, (z,), fast_mode=True)
    (g,) = torch.autograd.grad(kd_loss_ref(z, t, y, alpha=a, temperature=T, label_smoothing=eps).loss, z)
    valid = (y != -100).double()[:, None]
    q = torch.full((B, C), eps / C, dtype=torch.float64)
    q[torch.arange(B), y.clamp_min(0)] += 1 - eps
    closed = a * T * (torch.softmax(z / T, 1) - torch.softmax(t / T, 1)) + (1 - a) * (torch.softmax(z, 1) - q)
    torch.testing.assert_close(g, closed * valid / valid.sum())


def test_torch_compile_fullgraph_around_kdloss():
    case = Case(24, 50, label_smoothing=0.1)
    z, t, y = case.inputs()
    kw = case.kwargs()
    loss = KDLoss(alpha=kw["alpha"], temperature=kw["temperature"], label_smoothing=kw["label_smoothing"],
                  kernel="cpu")
    compiled = torch.compile(loss, fullgraph=True)
    out, dz = run(lambda z_, t_, y_, **_: compiled(z_, t_, y_), z, t, y, {})
    ref, dz_ref = run(cpu_loss, z, t, y, kw)
    torch.testing.assert_close(out.loss, ref.loss)
    torch.testing.assert_close(out.el2n, ref.el2n)
    torch.testing.assert_close(dz, dz_ref)


def test_kdloss_module_and_lazy_exports():
    m = kdprune.KDLoss(alpha=0.25, temperature=3.0)
    assert m.alpha == 0.25 and "alpha=0.25" in repr(m)
    assert kdprune.kd_loss is kd_loss and kdprune.KDOutput is KDOutput
    with pytest.raises(ConfigError, match="temperature"):
        KDLoss(alpha=0.5, temperature=0.0)
    z, t, y = Case(6, 11).inputs()
    torch.testing.assert_close(m(z, t, y).loss, kd_loss(z, t, y, alpha=0.25, temperature=3.0).loss)


def test_alpha_for_fraction_is_monotone_and_clipped():
    a, b, source = alpha_mod.coefficients()
    fractions = [1.0, 0.7, 0.5, 0.3, 0.1, 0.03, 0.01, 1e-4]
    alphas = [alpha_for_fraction(f) for f in fractions]
    assert all(0.0 <= x <= 1.0 for x in alphas)
    if b <= 0:
        assert alphas == sorted(alphas), "alpha must grow as the kept fraction shrinks"
    assert alphas[0] == pytest.approx(min(1.0, max(0.0, a)))
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ConfigError, match="keep_fraction"):
            alpha_for_fraction(bad)
    m = KDLoss(alpha="auto", temperature=4.0, fraction=0.3)
    assert m.alpha == alpha_for_fraction(0.3)
    z, t, y = Case(6, 11).inputs()
    auto = kd_loss(z, t, y, alpha="auto", fraction=0.3, temperature=4.0)
    with pytest.warns(DeprecationWarning, match="keep_fraction= is deprecated, use fraction="):
        old = KDLoss(alpha="auto", temperature=4.0, keep_fraction=0.3)
    with pytest.warns(DeprecationWarning, match="backend= is deprecated, use kernel="):
        old_kernel = kd_loss(z, t, y, alpha="auto", fraction=0.3, temperature=4.0, backend="torch")
    assert old.alpha == m.alpha
    torch.testing.assert_close(old_kernel.loss, auto.loss)
    torch.testing.assert_close(auto.loss, kd_loss(z, t, y, alpha=m.alpha, temperature=4.0).loss)


def test_alpha_rule_is_the_shipped_file_per_method_family(tmp_path):
    assert alpha_mod._load(alpha_mod.FIT_PATH)["form"] == alpha_mod.FORM  # data in the package, changed by a commit only
    assert alpha_for_fraction(0.3, method="random") == alpha_for_fraction(0.3, method="rs2")
    for method in ("random", "el2n", None):
        a, b, rule = alpha_mod.coefficients(method)
        assert rule in ("random", "hard", "default")
        assert alpha_for_fraction(0.3, method) == pytest.approx(min(1.0, max(0.0, a + b * math.log(0.3))))
    bad = tmp_path / "fit.json"
    bad.write_text('{"form": "something else", "a": 1, "b": 0}')
    with pytest.raises(ConfigError, match="not an alpha fit"):
        alpha_mod._load(str(bad))
