// Fused knowledge-distillation loss on the CPU: KL + CE + EL2N, forward and the student gradient, in
// one sweep over each row of student logits, teacher logits and label.
//
// Registered as torch.ops.kdprune.kd_loss_fwd (CPU); the meta/fake impl lives in
// kdprune/loss/function.py. Per row i (z student, t teacher, y label, T temperature, a alpha,
// eps label smoothing, q_i = (1 - eps) onehot(y) + eps / C):
//   loss_i = (1 - a) * CE_eps(z, y) + a * T^2 * KL(softmax(t / T) || softmax(z / T))
//   grad_i = (1 - a) * (softmax(z) - q) + a * T * (softmax(z / T) - softmax(t / T))
// The gradient written is d loss / d z for grad_output = 1, i.e. already divided by the mean's
// denominator (the non-ignored rows, at least 1); backward (kd_loss_bwd_) scales it in place by grad_output and
// leaves it untouched when grad_output is 1, so forward + backward move the minimum bytes.
//
// Numerics (mirrored by the torch reference and the Triton kernel):
// - 1 - p_y is sum_{j != y} p_j, accumulated directly, so EL2N and -log p_y = log1p(sum_{j!=y} e_j / e_y)
//   keep their digits for confident rows instead of cancelling against 1;
// - a teacher entry at -inf has probability 0 and contributes 0 to KL (never 0 * inf);
// - a student row that is all -inf has no distribution: its gradient is 0, ce = inf,
//   kl = inf (0 when the teacher row is all -inf too), el2n = 1;
// - a teacher row that is all -inf has no distribution either: kl = 0 and the KL term's gradient is 0;
// - rows whose label is ignore_index contribute 0 everywhere, gradient included.
//
// Speed: exp is evaluated once per element and per temperature and kept in a thread-local row
// buffer for the gradient; when T == 1 the student's two softmaxes share one exp. The inner loops are
// `omp simd` loops over float with an inlined polynomial exp, compiled twice (baseline and AVX2+FMA)
// and picked at run time, since setup.py does not build with -march=native.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace kdprune {
namespace {

#define KD_ALWAYS_INLINE inline __attribute__((always_inline))

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kInf = std::numeric_limits<float>::infinity();

// v where keep, else +0. A bit mask rather than `keep ? v : 0.f`: GCC keeps a branch around a
// possibly-trapping float op under the default -ftrapping-math, which stops vectorisation.
static KD_ALWAYS_INLINE float keep_if(bool keep, float v) {
  uint32_t bits;
  __builtin_memcpy(&bits, &v, sizeof(bits));
  bits &= 0u - static_cast<uint32_t>(keep);
  __builtin_memcpy(&v, &bits, sizeof(v));
  return v;
}

// exp(x) for x <= 0 (callers subtract the row max), 0 below -87.3 and for -inf; about 1 ulp
// (Cephes expf: x = n ln2 + r, |r| <= ln2 / 2, degree-5 polynomial, 2^n built in the exponent bits).
static KD_ALWAYS_INLINE float exp_nonpos(float x) {
  // clamp so that 2^n stays a normal float; the result is masked to 0 below -87.3 anyway
  const float xc = keep_if(__builtin_isgreaterequal(x, -87.3f), x) + keep_if(__builtin_isless(x, -87.3f), -87.3f);
  // round to nearest with the 1.5 * 2^23 trick: vectorises without SSE4.1's roundps
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return keep_if(__builtin_isgreaterequal(x, -87.3f), p * scale);
}

struct Params {
  int64_t C;
  float inv_t;       // 1 / T
  float alpha;       // weight of the distillation term
  float kl_weight;   // alpha * T^2
  float eps;         // label smoothing
  bool same_t;       // T == 1: softmax(z / T) is softmax(z)
  bool smoothing;    // eps > 0
  float gscale;      // 1 / denom: the gradient of the reduced loss
};

struct RowOut {
  float loss, ce, kl, el2n;
};

// Element conversions written as bit operations so the loops around them vectorise
// (c10::BFloat16's own conversions go through a struct and stay scalar).
static KD_ALWAYS_INLINE float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float v;
  __builtin_memcpy(&v, &bits, sizeof(v));
  return v;
}

static KD_ALWAYS_INLINE uint16_t float_to_bf16(float v) {  // round to nearest even, NaN stays NaN
  uint32_t bits;
  __builtin_memcpy(&bits, &v, sizeof(bits));
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t is_nan = static_cast<uint32_t>((bits & 0x7fffffffu) > 0x7f800000u);
  return static_cast<uint16_t>((rounded & (is_nan - 1u)) | (0x7fc0u & (0u - is_nan)));
}

// Converts one row to float (or hands back the row itself when it already is float).
template <typename T>
static KD_ALWAYS_INLINE const float* as_float(const T* src, float* buf, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    return src;
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const uint16_t* h = reinterpret_cast<const uint16_t*>(src);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) buf[j] = bf16_to_float(h[j]);
    return buf;
  } else {
    for (int64_t j = 0; j < n; ++j) buf[j] = static_cast<float>(src[j]);
    return buf;
  }
}

// Writes a float into the gradient row in the student's dtype; `raw` is the row viewed as uint16
// for bf16 (see float_to_bf16).
template <typename TS>
static KD_ALWAYS_INLINE void put(TS* row, int64_t j, float v) {
  if constexpr (std::is_same_v<TS, c10::BFloat16>) {
    reinterpret_cast<uint16_t*>(row)[j] = float_to_bf16(v);
  } else {
    row[j] = static_cast<TS>(v);
  }
}

struct Sums {
  float s1, o1, q1, sT, st, a, sz;
};

// The one sweep over a row: exps (stored for the gradient) and every sum the outputs need.
// SAME_T (T == 1) is a template flag so the vectorised loop has no branch in it.
template <bool SAME_T>
static KD_ALWAYS_INLINE Sums stats_sweep(const float* __restrict z, const float* __restrict t, int64_t y,
                                         float m1, float mt, float inv_t, int64_t C, float* __restrict e1,
                                         float* __restrict eT, float* __restrict et) {
  float s1 = 0.f, o1 = 0.f, q1 = 0.f, sT = 0.f, st = 0.f, a = 0.f, sz = 0.f;
#pragma omp simd reduction(+ : s1, o1, q1, sT, st, a, sz)
  for (int64_t j = 0; j < C; ++j) {
    const float dz1 = z[j] - m1;
    const float v1 = exp_nonpos(dz1);
    e1[j] = v1;
    s1 += v1;
    const float w = keep_if(j != y, v1);  // the other classes: 1 - p_y without cancellation
    o1 += w;
    q1 += w * w;
    sz += dz1;
    const float dzT = SAME_T ? dz1 : dz1 * inv_t;
    const float dtT = SAME_T ? t[j] - mt : (t[j] - mt) * inv_t;
    const float vt = exp_nonpos(dtT);
    et[j] = vt;
    st += vt;
    a += keep_if(__builtin_isgreater(vt, 0.f), vt * (dtT - dzT));  // teacher -inf: weight 0, never 0 * inf
    if constexpr (!SAME_T) {
      const float vT = exp_nonpos(dzT);
      eT[j] = vT;
      sT += vT;
    }
  }
  return Sums{s1, o1, q1, sT, st, a, sz};
}

// One row: statistics in one sweep (exps kept in e1 / eT / et), then the gradient.
template <typename TS>
static KD_ALWAYS_INLINE RowOut row_kernel(const float* z, const float* t, int64_t y, const Params& p,
                                          float* e1, float* eT, float* et, TS* grad) {
  const int64_t C = p.C;
  float m1 = kNegInf, mt = kNegInf;
#pragma omp simd reduction(max : m1, mt)
  for (int64_t j = 0; j < C; ++j) {
    m1 = z[j] > m1 ? z[j] : m1;
    mt = t[j] > mt ? t[j] : mt;
  }
  if (m1 == kNegInf) {  // no student distribution: defined outputs, zero gradient
    if (grad != nullptr) std::memset(grad, 0, sizeof(TS) * C);  // +0 is all-zero bits in every dtype
    RowOut out{0.f, kInf, mt == kNegInf ? 0.f : kInf, 1.f};
    out.loss = (p.alpha < 1.f ? kInf : 0.f) + (p.alpha > 0.f && out.kl > 0.f ? kInf : 0.f);
    return out;
  }
  const float inv_t = p.inv_t;
  const bool has_teacher = mt != kNegInf;
  Sums s = p.same_t ? stats_sweep<true>(z, t, y, m1, mt, inv_t, C, e1, eT, et)
                    : stats_sweep<false>(z, t, y, m1, mt, inv_t, C, e1, eT, et);
  const float s1 = s.s1, o1 = s.o1, q1 = s.q1, st = s.st, a = s.a, sz = s.sz;
  const float sT = p.same_t ? s1 : s.sT;
  float* eTw = p.same_t ? e1 : eT;

  // Scalars in double: O1 / e_y may exceed float's range when p_y underflows.
  const double e_y = e1[y];
  const double S1 = s1, O1 = o1;
  double ce = e_y > 0.0 ? std::log1p(O1 / e_y) : static_cast<double>(m1) - z[y] + std::log(S1);
  if (p.smoothing) {
    const double log_s1 = std::log(S1);
    // mean_j(-log p_j) = log S1 - mean_j(z_j - m1)
    ce = (1.0 - p.eps) * ce + p.eps * (log_s1 - static_cast<double>(sz) / C);
  }
  double kl = 0.0;
  if (has_teacher) {
    kl = static_cast<double>(a) / st - std::log(static_cast<double>(st)) + std::log(static_cast<double>(sT));
    kl = kl > 0.0 ? kl : 0.0;
  }
  const double el2n = std::sqrt(static_cast<double>(q1) + O1 * O1) / S1;
  double loss = 0.0;
  if (p.alpha < 1.f) loss += (1.0 - p.alpha) * ce;
  if (p.alpha > 0.f) loss += static_cast<double>(p.kl_weight) * kl;

  if (grad != nullptr) {
    const float b = (1.f - p.alpha) * p.gscale;
    const float aT = p.alpha / inv_t * p.gscale;
    const float c1 = b / s1;
    // no teacher distribution (an all -inf row): the KL term is the constant 0, so is its gradient
    const float cT = has_teacher ? aT / sT : 0.f;
    const float ct = has_teacher ? aT / st : 0.f;
    const float cq = b * p.eps / static_cast<float>(C);
    if (p.same_t) {
      const float c = c1 + cT;
#pragma omp simd
      for (int64_t j = 0; j < C; ++j) put(grad, j, c * e1[j] - ct * et[j] - cq);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < C; ++j) put(grad, j, c1 * e1[j] + cT * eT[j] - ct * et[j] - cq);
    }
    // p_y - q_y = -(sum_{j != y} p_j) + eps (1 - 1 / C), free of cancellation.
    const double gy = b * (-O1 / S1 + p.eps * (1.0 - 1.0 / C)) + static_cast<double>(cT) * eTw[y] -
                      static_cast<double>(ct) * et[y];
    put(grad, y, static_cast<float>(gy));
  }
  return RowOut{static_cast<float>(loss), static_cast<float>(ce), static_cast<float>(kl), static_cast<float>(el2n)};
}

template <typename TS, typename TT>
static KD_ALWAYS_INLINE void rows_body(const TS* S, const TT* Tt, const int64_t* labels, int64_t ignore_index,
                                       const Params& p, int64_t begin, int64_t end, TS* grad, float* loss,
                                       float* ce, float* kl, float* el2n) {
  const int64_t C = p.C;
  std::vector<float> buf(static_cast<size_t>(C) * 5);
  float* zb = buf.data();
  float* tb = zb + C;
  float* e1 = tb + C;
  float* eT = e1 + C;
  float* et = eT + C;
  for (int64_t i = begin; i < end; ++i) {
    TS* g = grad == nullptr ? nullptr : grad + i * C;
    const int64_t y = labels[i];
    if (y == ignore_index) {
      if (g != nullptr) std::memset(g, 0, sizeof(TS) * C);
      loss[i] = ce[i] = kl[i] = el2n[i] = 0.f;
      continue;
    }
    const float* z = as_float<TS>(S + i * C, zb, C);
    const float* t = as_float<TT>(Tt + i * C, tb, C);
    const RowOut r = row_kernel<TS>(z, t, y, p, e1, eT, et, g);
    loss[i] = r.loss;
    ce[i] = r.ce;
    kl[i] = r.kl;
    el2n[i] = r.el2n;
  }
}

template <typename TS, typename TT>
__attribute__((target("avx2,fma"))) void rows_avx2(const TS* S, const TT* Tt, const int64_t* labels,
                                                  int64_t ignore_index, const Params& p, int64_t begin,
                                                  int64_t end, TS* grad, float* loss, float* ce, float* kl,
                                                  float* el2n) {
  rows_body<TS, TT>(S, Tt, labels, ignore_index, p, begin, end, grad, loss, ce, kl, el2n);
}

template <typename TS, typename TT>
void rows_base(const TS* S, const TT* Tt, const int64_t* labels, int64_t ignore_index, const Params& p,
               int64_t begin, int64_t end, TS* grad, float* loss, float* ce, float* kl, float* el2n) {
  rows_body<TS, TT>(S, Tt, labels, ignore_index, p, begin, end, grad, loss, ce, kl, el2n);
}

bool has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

template <typename TS, typename TT>
void run_rows(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& labels,
              int64_t ignore_index, const Params& p, const c10::optional<at::Tensor>& grad, at::Tensor& loss,
              at::Tensor& ce, at::Tensor& kl, at::Tensor& el2n) {
  const int64_t B = student.size(0);
  const TS* S = student.const_data_ptr<TS>();
  const TT* Tt = teacher.const_data_ptr<TT>();
  const int64_t* lab = labels.const_data_ptr<int64_t>();
  TS* g = grad.has_value() ? grad->mutable_data_ptr<TS>() : nullptr;
  float* lo = loss.mutable_data_ptr<float>();
  float* c = ce.mutable_data_ptr<float>();
  float* k = kl.mutable_data_ptr<float>();
  float* e = el2n.mutable_data_ptr<float>();
  // About 32k elements per task: enough work to amortise a thread wake-up, small C batches rows.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(p.C, 1));
  const bool avx2 = has_avx2();
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    if (avx2)
      rows_avx2<TS, TT>(S, Tt, lab, ignore_index, p, begin, end, g, lo, c, k, e);
    else
      rows_base<TS, TT>(S, Tt, lab, ignore_index, p, begin, end, g, lo, c, k, e);
  });
}

template <typename TS>
void dispatch_teacher(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& labels,
                      int64_t ignore_index, const Params& p, const c10::optional<at::Tensor>& grad,
                      at::Tensor& loss, at::Tensor& ce, at::Tensor& kl, at::Tensor& el2n) {
  switch (teacher.scalar_type()) {
    case at::kFloat: return run_rows<TS, float>(student, teacher, labels, ignore_index, p, grad, loss, ce, kl, el2n);
    case at::kBFloat16: return run_rows<TS, c10::BFloat16>(student, teacher, labels, ignore_index, p, grad, loss, ce, kl, el2n);
    case at::kHalf: return run_rows<TS, c10::Half>(student, teacher, labels, ignore_index, p, grad, loss, ce, kl, el2n);
    default: TORCH_CHECK_TYPE(false, "kd_loss: teacher logits must be float32, bfloat16 or float16, got ", teacher.scalar_type());
  }
}

// reduction: 0 none, 1 mean, 2 sum. Returns (loss, ce, kl, el2n): loss is [] for mean/sum and [B]
// for none.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kd_loss_fwd_cpu(
    const at::Tensor& student_in, const at::Tensor& teacher_in, const at::Tensor& labels_in,
    const c10::optional<at::Tensor>& grad, double alpha, double temperature, double label_smoothing,
    int64_t ignore_index, int64_t reduction) {
  TORCH_CHECK_VALUE(student_in.dim() == 2, "kd_loss: student logits must be [B, C], got shape ", student_in.sizes());
  TORCH_CHECK_VALUE(teacher_in.sizes() == student_in.sizes(), "kd_loss: teacher logits ", teacher_in.sizes(),
                    " must have the student's shape ", student_in.sizes());
  const int64_t B = student_in.size(0), C = student_in.size(1);
  TORCH_CHECK_VALUE(labels_in.dim() == 1 && labels_in.size(0) == B, "kd_loss: labels must be [B] = [", B,
                    "], got shape ", labels_in.sizes());
  TORCH_CHECK_VALUE(C >= 1, "kd_loss: need at least one class");
  TORCH_CHECK_VALUE(temperature > 0.0, "kd_loss: temperature must be > 0, got ", temperature);
  TORCH_CHECK_VALUE(alpha >= 0.0 && alpha <= 1.0, "kd_loss: alpha must be in [0, 1], got ", alpha);
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0,
                    "kd_loss: label_smoothing must be in [0, 1], got ", label_smoothing);
  TORCH_CHECK_VALUE(reduction >= 0 && reduction <= 2, "kd_loss: reduction code must be 0, 1 or 2");
  const at::Tensor student = student_in.contiguous();
  const at::Tensor teacher = teacher_in.contiguous();
  const at::Tensor labels = labels_in.to(at::kLong).contiguous();
  if (grad.has_value()) {
    TORCH_CHECK_VALUE(grad->sizes() == student.sizes() && grad->scalar_type() == student.scalar_type() &&
                          grad->is_contiguous(),
                      "kd_loss: the gradient buffer must be a contiguous tensor shaped and typed like the student logits");
  }

  const int64_t* lab = labels.const_data_ptr<int64_t>();
  int64_t valid = 0;
  for (int64_t i = 0; i < B; ++i) {
    const int64_t y = lab[i];
    if (y == ignore_index) continue;
    TORCH_CHECK_VALUE(y >= 0 && y < C, "kd_loss: label ", y, " at row ", i, " is outside [0, ", C,
                      ") and is not ignore_index (", ignore_index, "); fix the labels or pass ignore_index");
    ++valid;
  }

  const auto f32 = student.options().dtype(at::kFloat);
  at::Tensor loss_rows = at::empty({B}, f32), ce = at::empty({B}, f32), kl = at::empty({B}, f32),
             el2n = at::empty({B}, f32);
  const double denom = reduction == 1 ? static_cast<double>(std::max<int64_t>(valid, 1)) : 1.0;
  Params p{C, static_cast<float>(1.0 / temperature), static_cast<float>(alpha),
           static_cast<float>(alpha * temperature * temperature), static_cast<float>(label_smoothing),
           temperature == 1.0, label_smoothing > 0.0, static_cast<float>(1.0 / denom)};
  switch (student.scalar_type()) {
    case at::kFloat: dispatch_teacher<float>(student, teacher, labels, ignore_index, p, grad, loss_rows, ce, kl, el2n); break;
    case at::kBFloat16: dispatch_teacher<c10::BFloat16>(student, teacher, labels, ignore_index, p, grad, loss_rows, ce, kl, el2n); break;
    case at::kHalf: dispatch_teacher<c10::Half>(student, teacher, labels, ignore_index, p, grad, loss_rows, ce, kl, el2n); break;
    default: TORCH_CHECK_TYPE(false, "kd_loss: student logits must be float32, bfloat16 or float16, got ", student.scalar_type());
  }
  at::Tensor loss;
  if (reduction == 0) {
    loss = loss_rows;
  } else {
    double total = 0.0;  // serial, in double: deterministic whatever the thread count
    const float* lr = loss_rows.const_data_ptr<float>();
    for (int64_t i = 0; i < B; ++i) total += lr[i];
    loss = at::scalar_tensor(total / denom, f32);
  }
  return {loss, ce, kl, el2n};
}

// Backward: grad *= grad_output, in place (grad_output a scalar, or [B] for reduction="none");
// a factor of exactly 1 leaves the row untouched. Reading grad_output here is free: it is on the CPU.
void kd_loss_bwd_cpu(at::Tensor& grad, const at::Tensor& grad_output_in) {
  TORCH_CHECK_VALUE(grad.dim() == 2 && grad.is_contiguous(), "kd_loss_bwd_: grad must be a contiguous [B, C] tensor");
  const int64_t B = grad.size(0), C = grad.size(1);
  const at::Tensor go = grad_output_in.to(at::kFloat).contiguous();
  TORCH_CHECK_VALUE(go.numel() == 1 || (go.dim() == 1 && go.size(0) == B),
                    "kd_loss_bwd_: grad_output must be a scalar or [B]");
  const float* s = go.const_data_ptr<float>();
  const bool per_row = go.dim() == 1;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(C, 1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "kd_loss_bwd_", [&] {
    scalar_t* g = grad.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float f = s[per_row ? i : 0];
        if (f == 1.0f) continue;
        scalar_t* row = g + i * C;
        for (int64_t j = 0; j < C; ++j) row[j] = static_cast<scalar_t>(static_cast<float>(row[j]) * f);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(kdprune, m) {
  m.def(
      "kd_loss_fwd(Tensor student, Tensor teacher, Tensor labels, Tensor(a!)? grad, float alpha, "
      "float temperature, float label_smoothing, int ignore_index, int reduction) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("kd_loss_bwd_(Tensor(a!) grad, Tensor grad_output) -> ()");
}

TORCH_LIBRARY_IMPL(kdprune, CPU, m) {
  m.impl("kd_loss_fwd", &kd_loss_fwd_cpu);
  m.impl("kd_loss_bwd_", &kd_loss_bwd_cpu);
}

}  // namespace kdprune
