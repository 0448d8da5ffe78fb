// CPU kernels of udg_fast::din_attention: DIN's local activation unit (Zhou et al. 2018), the
// attention of the DIN and DIEN models, scored on the valid history steps only.
//
// For a sample b with target q_b [D] and a valid step n with key k_n [D]:
//
//   a_1 = act(W_q q + W_k k + W_d (q − k) + W_p (q ⊙ k) + b_1)          fc1 is [h1, 4D]
//       = act(qterm_b + k_n · Mᵀ_b)
//           qterm = q (W_q + W_d)ᵀ + b_1          ([B, h1], once per sample, not per step)
//           M_b   = W_kd + W_p diag(q_b)          ([h1, D], once per sample; W_kd = W_k − W_d)
//   a_l = act(a_{l−1} W_lᵀ + b_l)                                        hidden layers 2..L
//   s_n = a_L · w_outᵀ + b_out                                           the step's score
//
// Per step, layer 1 is one D × h1 product: a quarter of the literal 4D concat's, half of the
// [k, q ⊙ k] · [W_kd, W_p]ᵀ form this kernel used before (2026-11-28: 48 → 44 ms forward +
// backward at the size below, interleaved A/B runs, min of 15). The price is one GEMM per sample
// (~25 rows × 36 × 80 at DIN's sizes: oneDNN's brgemm runs it at ~100 GFLOP/s on one Zen 4
// core, as fast as the block GEMMs) and building M_b (h1 × D multiply-adds per sample).
//
// Fused in the cache sense, as gated_linear.cpp: the valid steps (idx, sorted) are cut into blocks
// of whole samples of ~kBlockRows steps; per block, layer 1 is a GEMM per sample straight into
// the rows of the saved activations (the keys read in place when the sample's valid steps are
// consecutive, the usual prefix mask; gathered otherwise), every later layer one block GEMM
// (cpu/common.h gemm_nn), and the bias + activation pass runs on the rows while they are still
// in cache. Nothing of size [B, T, ·] is written but the scores (and dk in the backward); the
// eager form (udg_fast/ops/din_attention.py::_din_attention_eager) writes the gathered rows, every
// pre-activation and every activation, and reads them back for σ and σ'.
//
// Backward per block, from the saved activations (σ' = a(1 − a), relu' = a > 0): the layer
// gradients in turn (dW_l += dA_lᵀ a_{l−1} into the group's partial, dA_{l−1} = dA_l W_l ⊙ act'),
// then per sample dk = dA_1 M_b (into dk's rows) and dMᵀ_b = K_bᵀ dA_1, which gives
// dW_kd += dM_b, dW_p += dM_b diag(q_b) and the q ⊙ k part of dq_b (Σ_i dM_b[i, j] W_p[i, j]).
// A block holds whole samples, so dq and dqterm rows are written by one block only; the q term
// (dq += dqterm W_qd, dW_qd, db_1) is three small GEMMs at the end. Weight gradients: fixed
// groups of blocks with their own partials, summed in group order, so the gradients are
// bit-identical run to run for a given thread count (as gated_linear.cpp).
//
// Measured on the development machine (one thread, B = 2048, T = 50, ~52k valid steps, D = 36,
// hidden 80 → 40, sigmoid), forward + backward: 44 ms (48 ms in the [k, q ⊙ k] form; 69 ms for
// the eager factored form and 245 ms for the literal 4D concat, benchmarks/results/
// cpu-ops-2026-11-28.md); perf puts ~55 % of it in the GEMM micro-kernels.
#include "cpu/din_attention.h"
#include "cpu/common.h"

#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace udg_fast::cpu {

namespace {

using namespace detail;

// Steps per block: the backward's working set per step is the gathered row and its gradient
// (2 · 2D), two activation-gradient rows (2 · h_max) and the saved activations (Σ h): at D = 36,
// 80 → 40 that is ~520 floats, so 512 steps are ~1 MiB (Zen 4's L2 per core).
constexpr int64_t kBlockRows = 512;
constexpr int64_t kSumRows = 64;  // rows per partial column sum of a bias gradient (see backward)

enum class Act { kSigmoid, kRelu };

Act parse_act(c10::string_view a) {
  TORCH_CHECK(a == "sigmoid" || a == "relu",
              "udg_fast::din_attention: activation must be 'sigmoid' or 'relu', got '", a, "'");
  return a == "sigmoid" ? Act::kSigmoid : Act::kRelu;
}

// ---- elementwise passes over a block's rows ---------------------------------------------------
// One call per block, the row loop inside (a call per row through the ISA-clone dispatch cost
// ~2 ms of a 50 ms forward + backward at 52k rows). float32: vectorised clones per ISA level;
// float64 (gradcheck): the same bodies, plain.

// act(v): σ (sigmoid2's branch-free form, vectorisable) or relu keeping NaN
template <typename T>
UDG_INLINE T act_of(T v, bool sigm) {
  if (sigm) {
    T s, om;
    sigmoid2(v, s, om);
    return s;
  }
  return relu_nan(v);
}

// act' from the activation a: σ' = a(1 − a) (as torch's sigmoid_backward), relu' = [a > 0]
// (a select: NaN-safe)
template <typename T>
UDG_INLINE T dact_of(T g, T a, bool sigm) {
  return sigm ? g * (a * (T(1) - a)) : (a > T(0) ? g : T(0));
}

// x[r] = k_n for the block's steps n = ix[r]
template <typename T>
UDG_INLINE void gather_body(T* __restrict x, const T* __restrict k, const int64_t* ix, int64_t rows,
                            int64_t D) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict kr = k + ix[r] * D;
    T* __restrict xr = x + r * D;
    for (int64_t j = 0; j < D; ++j) xr[j] = kr[j];
  }
}

// xt[j, r] = x[r, j]: a sample's gathered keys transposed ([D, n]), the A operand of dMᵀ = Kᵀ dA_1
template <typename T>
UDG_INLINE void transpose_body(T* __restrict xt, const T* __restrict x, int64_t n, int64_t D) {
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t j = 0; j < D; ++j) xt[j * n + r] = x[r * D + j];
  }
}

// m[a, :c] = w[a, :c] + s[a] · v[a, :c]: the forward's per-sample Mᵀ_b = W_kdᵀ + diag(q_b) W_pᵀ
// ([D, h1]; the backward's M_b in the other layout is mcols_body)
template <typename T>
UDG_INLINE void mrows_body(T* __restrict m, const T* __restrict w, const T* __restrict v,
                           const T* __restrict s, int64_t rows, int64_t cols) {
  for (int64_t a = 0; a < rows; ++a) {
    const T sa = s[a];
    const T* __restrict wa = w + a * cols;
    const T* __restrict va = v + a * cols;
    T* __restrict ma = m + a * cols;
    for (int64_t c = 0; c < cols; ++c) ma[c] = wa[c] + sa * va[c];
  }
}

// m[i, j] = w[i, j] + v[i, j] · s[j]  ([h1, D]: M_b = W_kd + W_p diag(q_b), for dk = dA_1 M_b)
template <typename T>
UDG_INLINE void mcols_body(T* __restrict m, const T* __restrict w, const T* __restrict v,
                           const T* __restrict s, int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows; ++i) {
    const T* __restrict wi = w + i * cols;
    const T* __restrict vi = v + i * cols;
    T* __restrict mi = m + i * cols;
    for (int64_t j = 0; j < cols; ++j) mi[j] = wi[j] + vi[j] * s[j];
  }
}

// A sample's dMᵀ_b [D, h1] folded into the block's sums and dq_b:
//   acc_kd += dMᵀ_b;  acc_p[j] += q_b[j] dMᵀ_b[j];  dq_b[j] += Σ_i dMᵀ_b[j, i] W_pᵀ[j, i]
// The dot product runs in kLanes independent partial sums so that the loop vectorises (a single
// running sum is a dependency chain the compiler may not reorder: 3.6 ms of a 46 ms op call).
template <typename T>
UDG_INLINE void fold_body(T* __restrict acc_kd, T* __restrict acc_p, T* __restrict dq,
                          const T* __restrict dmt, const T* __restrict q, const T* __restrict wpt,
                          int64_t D, int64_t h1) {
  constexpr int64_t kLanes = 16;
  for (int64_t j = 0; j < D; ++j) {
    const T qj = q[j];
    const T* __restrict dj = dmt + j * h1;
    const T* __restrict wj = wpt + j * h1;
    T* __restrict kj = acc_kd + j * h1;
    T* __restrict pj = acc_p + j * h1;
    T lane[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= h1; i += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) {
        const T v = dj[i + l];
        kj[i + l] += v;
        pj[i + l] += qj * v;
        lane[l] += v * wj[i + l];
      }
    }
    T dot = T(0);
    for (; i < h1; ++i) {
      kj[i] += dj[i];
      pj[i] += qj * dj[i];
      dot += dj[i] * wj[i];
    }
    for (int64_t l = 0; l < kLanes; ++l) dot += lane[l];
    dq[j] += dot;
  }
}

// layer 1: h[r] = act(h[r] + qterm[b]), b = ix[r] / T
template <typename T>
UDG_INLINE void act_qterm_body(T* __restrict h, const T* __restrict qterm, const int64_t* ix,
                               int64_t T_, int64_t rows, int64_t n, bool sigm) {
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict hr = h + r * n;
    const T* __restrict qr = qterm + (ix[r] / T_) * n;
    for (int64_t j = 0; j < n; ++j) hr[j] = act_of(hr[j] + qr[j], sigm);
  }
}

// layers 2..L: h[r] = act(h[r] + b)
template <typename T>
UDG_INLINE void act_bias_body(T* __restrict h, const T* __restrict b, int64_t rows, int64_t n,
                              bool sigm) {
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict hr = h + r * n;
    for (int64_t j = 0; j < n; ++j) hr[j] = act_of(hr[j] + b[j], sigm);
  }
}

// the score layer's gradient into the last hidden layer: d[r] = ds[r] · w_out ⊙ act'(a[r]);
// db += d[r] (db: that layer's bias gradient)
template <typename T>
UDG_INLINE void dact_score_body(T* __restrict d, const T* __restrict ds, const T* __restrict w,
                                const T* __restrict a, T* __restrict db, int64_t rows, int64_t n,
                                bool sigm) {
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict dr = d + r * n;
    const T* __restrict ar = a + r * n;
    for (int64_t j = 0; j < n; ++j) {
      const T v = dact_of(ds[r] * w[j], ar[j], sigm);
      dr[j] = v;
      db[j] += v;
    }
  }
}

// d[r] ⊙= act'(a[r]); db += d[r]
template <typename T>
UDG_INLINE void dact_bias_body(T* __restrict d, const T* __restrict a, T* __restrict db,
                               int64_t rows, int64_t n, bool sigm) {
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict dr = d + r * n;
    const T* __restrict ar = a + r * n;
    for (int64_t j = 0; j < n; ++j) {
      const T v = dact_of(dr[j], ar[j], sigm);
      dr[j] = v;
      db[j] += v;
    }
  }
}

// layer 1: d[r] ⊙= act'(a[r]); dqterm[b] += d[r] (the q term's gradient, summed per sample)
template <typename T>
UDG_INLINE void dact_qterm_body(T* __restrict d, const T* __restrict a, T* __restrict dqterm,
                                const int64_t* ix, int64_t T_, int64_t rows, int64_t n,
                                bool sigm) {
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict dr = d + r * n;
    const T* __restrict ar = a + r * n;
    T* __restrict qr = dqterm + (ix[r] / T_) * n;
    for (int64_t j = 0; j < n; ++j) {
      const T v = dact_of(dr[j], ar[j], sigm);
      dr[j] = v;
      qr[j] += v;
    }
  }
}

// dk[ix[r]] = dx[r] for a sample's rows r < n whose steps are not consecutive (see keys_run)
template <typename T>
UDG_INLINE void scatter_body(T* __restrict dk, const T* __restrict dx, const int64_t* ix,
                             int64_t n, int64_t D) {
  for (int64_t r = 0; r < n; ++r) {
    T* __restrict dkp = dk + ix[r] * D;
    const T* __restrict dxr = dx + r * D;
    for (int64_t j = 0; j < D; ++j) dkp[j] = dxr[j];
  }
}

// dk[p] = 0 for every step p in [p0, p1) that is not a valid step of the block (ix[0:rows])
template <typename T>
UDG_INLINE void zero_padded_body(T* __restrict dk, const int64_t* ix, int64_t rows, int64_t p0,
                                 int64_t p1, int64_t D) {
  int64_t r = 0;
  for (int64_t p = p0; p < p1; ++p) {
    if (r < rows && ix[r] == p) {
      ++r;
      continue;
    }
    T* __restrict dkp = dk + p * D;
    for (int64_t j = 0; j < D; ++j) dkp[j] = T(0);
  }
}

// float32 clones and float64 overloads of the passes above.
#define UDG_FLOAT_AND_DOUBLE(DEF) DEF(UDG_CLONES, float) DEF(, double)
#define UDG_DEF_PASSES(ATTR, S)                                                                \
  ATTR void gather_keys(S* x, const S* k, const int64_t* ix, int64_t rows, int64_t D) {       \
    gather_body<S>(x, k, ix, rows, D);                                                         \
  }                                                                                            \
  ATTR void transpose_keys(S* xt, const S* x, int64_t n, int64_t D) {                          \
    transpose_body<S>(xt, x, n, D);                                                            \
  }                                                                                            \
  ATTR void sample_mt(S* m, const S* w, const S* v, const S* s, int64_t rows, int64_t cols) {  \
    mrows_body<S>(m, w, v, s, rows, cols);                                                     \
  }                                                                                            \
  ATTR void sample_m(S* m, const S* w, const S* v, const S* s, int64_t rows, int64_t cols) {   \
    mcols_body<S>(m, w, v, s, rows, cols);                                                     \
  }                                                                                            \
  ATTR void fold_sample(S* acc_kd, S* acc_p, S* dq, const S* dmt, const S* q, const S* wpt,    \
                        int64_t D, int64_t h1) {                                               \
    fold_body<S>(acc_kd, acc_p, dq, dmt, q, wpt, D, h1);                                       \
  }                                                                                            \
  ATTR void act_qterm(S* h, const S* qterm, const int64_t* ix, int64_t T_, int64_t rows,      \
                      int64_t n, bool sigm) {                                                  \
    act_qterm_body<S>(h, qterm, ix, T_, rows, n, sigm);                                        \
  }                                                                                            \
  ATTR void act_bias(S* h, const S* b, int64_t rows, int64_t n, bool sigm) {                   \
    act_bias_body<S>(h, b, rows, n, sigm);                                                     \
  }                                                                                            \
  ATTR void dact_score(S* d, const S* ds, const S* w, const S* a, S* db, int64_t rows,         \
                       int64_t n, bool sigm) {                                                 \
    dact_score_body<S>(d, ds, w, a, db, rows, n, sigm);                                        \
  }                                                                                            \
  ATTR void dact_bias(S* d, const S* a, S* db, int64_t rows, int64_t n, bool sigm) {           \
    dact_bias_body<S>(d, a, db, rows, n, sigm);                                                \
  }                                                                                            \
  ATTR void dact_qterm(S* d, const S* a, S* dqterm, const int64_t* ix, int64_t T_,             \
                       int64_t rows, int64_t n, bool sigm) {                                   \
    dact_qterm_body<S>(d, a, dqterm, ix, T_, rows, n, sigm);                                   \
  }                                                                                            \
  ATTR void scatter_rows(S* dk, const S* dx, const int64_t* ix, int64_t n, int64_t D) {       \
    scatter_body<S>(dk, dx, ix, n, D);                                                         \
  }                                                                                            \
  ATTR void zero_padded(S* dk, const int64_t* ix, int64_t rows, int64_t p0, int64_t p1,        \
                        int64_t D) {                                                           \
    zero_padded_body<S>(dk, ix, rows, p0, p1, D);                                              \
  }
UDG_FLOAT_AND_DOUBLE(UDG_DEF_PASSES)
#undef UDG_DEF_PASSES
#undef UDG_FLOAT_AND_DOUBLE

// ---- shapes, blocks ---------------------------------------------------------------------------

// The MLP's shapes, checked: hidden widths h_1..h_L and the contiguous weights of layers 2..L+1.
struct Net {
  int64_t B = 0, T = 0, D = 0, N = 0;
  std::vector<int64_t> h;       // hidden widths h_1..h_L
  std::vector<int64_t> off;     // layer l's activations start at acts + off[l] (= N · Σ_{j<l} h_j)
  std::vector<at::Tensor> w;    // weights[l] [h_{l+1}, h_l] (last: [1, h_L]), contiguous
  int64_t sum_h = 0, max_h = 0;
};

void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t dim) {
  check_cpu_tensor("udg_fast::din_attention", t, name, dtype, "query", dim);
}

Net make_net(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& idx,
             const at::Tensor& fc1_weight, at::TensorList weights) {
  TORCH_CHECK(query.scalar_type() == at::kFloat || query.scalar_type() == at::kDouble,
              "udg_fast::din_attention (CPU): query must be float32 or float64, got ",
              query.scalar_type());
  const auto dt = query.scalar_type();
  check_tensor(query, "query", dt, 2);
  check_tensor(keys, "keys", dt, 3);
  check_tensor(fc1_weight, "fc1_weight", dt, 2);
  TORCH_CHECK(idx.device().is_cpu() && idx.scalar_type() == at::kLong && idx.dim() == 1,
              "udg_fast::din_attention (CPU): idx must be a 1-D int64 CPU tensor, got ",
              idx.scalar_type(), " ", idx.sizes(), " on ", idx.device());
  Net net;
  net.B = query.size(0);
  net.D = query.size(1);
  net.T = keys.size(1);
  net.N = idx.size(0);
  TORCH_CHECK(keys.size(0) == net.B && keys.size(2) == net.D,
              "udg_fast::din_attention (CPU): keys must be [", net.B, ", T, ", net.D,
              "] (query is [B, D]), got ", keys.sizes());
  TORCH_CHECK(fc1_weight.size(1) == 4 * net.D, "udg_fast::din_attention (CPU): fc1_weight must be "
              "[h1, ", 4 * net.D, "] (4·D), got ", fc1_weight.sizes());
  TORCH_CHECK(!weights.empty(), "udg_fast::din_attention (CPU): weights must hold at least the "
              "output layer [1, h1]");
  net.h.push_back(fc1_weight.size(0));
  for (size_t l = 0; l < weights.size(); ++l) {
    check_tensor(weights[l], "weights[i]", dt, 2);
    TORCH_CHECK(weights[l].size(1) == net.h.back(), "udg_fast::din_attention (CPU): weights[",
                l, "] must have ", net.h.back(), " columns (the width of the layer before), got ",
                weights[l].sizes());
    if (l + 1 < weights.size()) net.h.push_back(weights[l].size(0));
    net.w.push_back(weights[l].contiguous());
  }
  TORCH_CHECK(weights.back().size(0) == 1, "udg_fast::din_attention (CPU): the last weight must "
              "be [1, h_L] (one score), got ", weights.back().sizes());
  for (int64_t hl : net.h) {
    net.off.push_back(net.N * net.sum_h);
    net.sum_h += hl;
    net.max_h = std::max(net.max_h, hl);
  }
  return net;
}

// Blocks of whole samples: block i holds samples [sb[i], sb[i+1]) and packed rows
// [rb[i], rb[i+1]). Checks that idx is strictly increasing and within [0, B·T).
struct Blocks {
  std::vector<int64_t> sb, rb;
  int64_t max_rows = 0;
  int64_t count() const { return static_cast<int64_t>(sb.size()) - 1; }
};

Blocks make_blocks(const Net& net, const int64_t* ix) {
  const int64_t BT = net.B * net.T;
  std::vector<int64_t> start(net.B + 1, 0);  // start[b]: first packed row of sample b
  int64_t prev = -1;
  for (int64_t r = 0; r < net.N; ++r) {
    const int64_t p = ix[r];
    TORCH_CHECK(p > prev && p < BT, "udg_fast::din_attention (CPU): idx must be strictly "
                "increasing positions in [0, B·T = ", BT, "), got idx[", r, "] = ", p,
                r > 0 ? " after " : "", r > 0 ? std::to_string(prev) : std::string());
    prev = p;
    start[p / net.T + 1] += 1;
  }
  for (int64_t b = 0; b < net.B; ++b) start[b + 1] += start[b];
  Blocks blk;
  blk.sb.push_back(0);
  blk.rb.push_back(0);
  for (int64_t b = 0; b < net.B; ++b) {
    if (start[b + 1] - blk.rb.back() >= kBlockRows || b + 1 == net.B) {
      blk.max_rows = std::max(blk.max_rows, start[b + 1] - blk.rb.back());
      blk.sb.push_back(b + 1);
      blk.rb.push_back(start[b + 1]);
    }
  }
  return blk;
}

// Calls f(s0, n, b) for every sample b with valid steps in a block: its rows [s0, s0 + n) (the
// rows are sorted by position, so a sample's rows are consecutive).
template <typename F>
UDG_INLINE void for_each_sample(const int64_t* ix, int64_t rows, int64_t T_, const F& f) {
  for (int64_t r = 0; r < rows;) {
    const int64_t b = ix[r] / T_;
    int64_t e = r + 1;
    while (e < rows && ix[e] / T_ == b) ++e;
    f(r, e - r, b);
    r = e;
  }
}

// Whether a sample's n valid steps ix[0:n] are consecutive positions (a prefix mask, the usual
// case): then its keys are rows of `keys` as they are, and its dk rows can be written in place —
// no gather, no copy (the gather was ~1.2 ms of a 46 ms forward + backward, B = 2048, T = 50).
UDG_INLINE bool keys_run(const int64_t* ix, int64_t n) { return ix[n - 1] - ix[0] == n - 1; }

// fc1's [h1, 4D] weight as the factored form uses it: W_qd = W_q + W_d, W_kd = W_k − W_d and W_p
// ([h1, D] each), and W_kdᵀ, W_pᵀ ([D, h1]) for the forward's per-sample Mᵀ_b; all contiguous.
struct Fc1 {
  at::Tensor qd, kd, p, kd_t, p_t;
};

Fc1 split_fc1(const at::Tensor& w1, int64_t D) {
  const auto parts = w1.split(D, 1);
  Fc1 f;
  f.qd = parts[0] + parts[2];
  f.kd = parts[1] - parts[2];
  f.p = parts[3].contiguous();
  f.kd_t = f.kd.t().contiguous();
  f.p_t = f.p.t().contiguous();
  return f;
}

// ---- forward --------------------------------------------------------------------------------

template <typename T>
void forward_impl(const Net& net, const Blocks& blk, const at::Tensor& query,
                  const at::Tensor& keys, const int64_t* ix, const Fc1& fc1,
                  const at::Tensor& qterm, at::TensorList biases, bool sigm, at::Tensor& scores,
                  at::Tensor& acts) {
  const int64_t D = net.D, T_ = net.T, L = static_cast<int64_t>(net.h.size()), h1 = net.h[0];
  const T* qp = query.const_data_ptr<T>();
  const T* kp = keys.const_data_ptr<T>();
  const T* qtp = qterm.const_data_ptr<T>();
  const T* wkdt = fc1.kd_t.const_data_ptr<T>();
  const T* wpt = fc1.p_t.const_data_ptr<T>();
  T* sp = scores.mutable_data_ptr<T>();
  T* ap = acts.mutable_data_ptr<T>();
  std::vector<at::Tensor> bias(biases.size());
  for (size_t l = 0; l < biases.size(); ++l) bias[l] = biases[l].contiguous();
  const T b_out = bias.back().const_data_ptr<T>()[0];
  // row-major [in, out] copies of the weights for the block GEMMs (x · Wᵀ = x · (Wᵀ))
  std::vector<at::Tensor> w_t;
  for (const auto& w : net.w) w_t.push_back(w.t().contiguous());
  const auto opts = query.options();
  const int64_t threads = at::get_num_threads();
  // scratch: the gathered keys (max_rows × D), the scores (max_rows), a sample's Mᵀ (D × h1)
  const int64_t R = blk.max_rows;
  parallel_items<T>(blk.count(), threads, R * (D + 1) + D * h1, [&](int64_t i, T* buf) {
    const int64_t r0 = blk.rb[i], rows = blk.rb[i + 1] - r0;
    if (rows == 0) return;
    const int64_t* bix = ix + r0;
    T* x = buf;
    T* s = x + R * D;
    T* mt = s + R;
    // layer 1, per sample: its steps' keys (gathered only when not consecutive) times Mᵀ_b into
    // the saved rows; then + qterm_b and act over the block, in cache
    T* a = ap + net.off[0] + r0 * h1;
    for_each_sample(bix, rows, T_, [&](int64_t s0, int64_t n, int64_t b) {
      const T* ks = kp + bix[s0] * D;
      if (!keys_run(bix + s0, n)) {
        gather_keys(x + s0 * D, kp, bix + s0, n, D);
        ks = x + s0 * D;
      }
      sample_mt(mt, wkdt, wpt, qp + b * D, D, h1);
      gemm_nn<T>(n, h1, D, ks, D, mt, h1, a + s0 * h1, h1, opts);
    });
    act_qterm(a, qtp, bix, T_, rows, h1, sigm);
    for (int64_t l = 1; l < L; ++l) {
      T* al = ap + net.off[l] + r0 * net.h[l];
      gemm_nn<T>(rows, net.h[l], net.h[l - 1], a, net.h[l - 1], w_t[l - 1].const_data_ptr<T>(),
                 net.h[l], al, net.h[l], opts);
      act_bias(al, bias[l - 1].const_data_ptr<T>(), rows, net.h[l], sigm);
      a = al;
    }
    gemm_nn<T>(rows, 1, net.h[L - 1], a, net.h[L - 1], w_t[L - 1].const_data_ptr<T>(), 1, s, 1,
               opts);
    for (int64_t r = 0; r < rows; ++r) sp[bix[r]] = s[r] + b_out;
  });
}

// ---- backward -------------------------------------------------------------------------------

// The packed layout of a group's weight-gradient partial (and of their total): dW_kdᵀ [D, h1] at
// 0, dW_pᵀ [D, h1] at p, then for weights[l] its dW at w[2l] and, for every layer but the score
// layer (whose bias gradient is one sum at the end), its db at w[2l + 1]; every offset aligned
// (the gradients are returned as views of the total).
struct Packed {
  int64_t p = 0, size = 0;
  std::vector<int64_t> w;
};

Packed packed_layout(const Net& net) {
  const int64_t L = static_cast<int64_t>(net.h.size()), n1 = net.D * net.h[0];
  Packed pk;
  pk.p = aligned_offset(n1);
  int64_t P = aligned_offset(pk.p + n1);
  for (int64_t l = 0; l < L; ++l) {
    pk.w.push_back(P);
    P = aligned_offset(P + net.w[l].numel());
    pk.w.push_back(P);
    if (l + 1 < L) P = aligned_offset(P + net.w[l].size(0));
  }
  pk.size = P;
  return pk;
}

template <typename T>
void backward_impl(const Net& net, const Blocks& blk, const at::Tensor& gs, const at::Tensor& query,
                   const at::Tensor& keys, const int64_t* ix, const at::Tensor& acts,
                   const Fc1& fc1, bool sigm, at::Tensor& dq, at::Tensor& dk, at::Tensor& dqterm,
                   at::Tensor& partials, const Packed& pk) {
  const int64_t D = net.D, T_ = net.T, L = static_cast<int64_t>(net.h.size());
  const T* qp = query.const_data_ptr<T>();
  const T* kp = keys.const_data_ptr<T>();
  const T* gp = gs.const_data_ptr<T>();
  const T* ap = acts.const_data_ptr<T>();
  const T* wkd = fc1.kd.const_data_ptr<T>();
  const T* wp = fc1.p.const_data_ptr<T>();
  const T* wpt = fc1.p_t.const_data_ptr<T>();
  T* dqp = dq.mutable_data_ptr<T>();
  T* dkp = dk.mutable_data_ptr<T>();
  T* dqtp = dqterm.mutable_data_ptr<T>();
  const T* w_out = net.w[L - 1].const_data_ptr<T>();
  const auto opts = query.options();
  const int64_t threads = at::get_num_threads();
  const int64_t nblk = blk.count(), ngroup = partials.size(0);
  const int64_t R = blk.max_rows, P = partials.size(1), h1 = net.h[0], n1 = D * h1;
  // scratch: ds (R), two activation-gradient buffers (R × h_max each), a sample's gathered keys,
  // their gradient and the keys transposed (T × D each), its M_b, dMᵀ_b and the block's sums of
  // dMᵀ_b and q_b ⊙ dMᵀ_b (D × h1 each), bias-gradient column sums of a block and of a chunk
  // (h_max each)
  const int64_t scratch = R + 2 * R * net.max_h + 3 * T_ * D + 4 * n1 + 2 * net.max_h;
  parallel_items<T>(ngroup, threads, scratch, [&](int64_t grp, T* buf) {
    T* ds = buf;
    T* cur = ds + R;
    T* nxt = cur + R * net.max_h;
    T* x = nxt + R * net.max_h;
    T* dx = x + T_ * D;
    T* xt = dx + T_ * D;
    T* m = xt + D * T_;
    T* dmt = m + n1;
    T* acc_kd = dmt + n1;
    T* acc_p = acc_kd + n1;
    T* colsum = acc_p + n1;
    T* sub = colsum + net.max_h;
    // Bias gradients are summed in three levels — chunks of kSumRows rows, the block, the group's
    // partial (then the groups, in order) — not in one running sum, whose float32 rounding error
    // grows with the rows it covers (one sum per group: 9e-6 against eager's 1.3e-6 at 7.5k rows;
    // one per block: 3.4e-5 against 2.7e-7 for a 4-thread split of 4k rows).
    // pass(c0, cr, sub) writes the column sums of rows [c0, c0 + cr) into sub.
    auto bias_grad = [&](T* db, int64_t rows, int64_t n, const auto& pass) {
      std::fill(colsum, colsum + n, T(0));
      for (int64_t c0 = 0; c0 < rows; c0 += kSumRows) {
        std::fill(sub, sub + n, T(0));
        pass(c0, std::min(kSumRows, rows - c0), sub);
        add_inplace(colsum, sub, n);
      }
      add_inplace(db, colsum, n);
    };
    T* part = partials.mutable_data_ptr<T>() + grp * P;
    const int64_t blk_begin = grp * nblk / ngroup, blk_end = (grp + 1) * nblk / ngroup;
    for (int64_t i = blk_begin; i < blk_end; ++i) {
      const int64_t r0 = blk.rb[i], rows = blk.rb[i + 1] - r0;
      const int64_t b0 = blk.sb[i], b1 = blk.sb[i + 1];
      const int64_t* bix = ix + r0;
      std::fill(dqtp + b0 * h1, dqtp + b1 * h1, T(0));
      std::fill(dqp + b0 * D, dqp + b1 * D, T(0));
      if (rows > 0) {
        // the score layer: dw_out += dsᵀ a_L; dA_L = ds ⊗ w_out ⊙ act'(a_L) (its column sums are
        // the bias gradient of the layer that produced a_L). db_out = Σ ds is one ATen sum at the
        // end (a scalar over all N rows: summed here per block in float32 it missed eager's
        // accuracy, 3.2e-6 against 8.5e-7 at 4k rows).
        const int64_t hL = net.h[L - 1];
        const T* aL = ap + net.off[L - 1] + r0 * hL;
        for (int64_t r = 0; r < rows; ++r) ds[r] = gp[bix[r]];
        at::Tensor dwo = view_of(part + pk.w[2 * (L - 1)], 1, hL, opts);
        dwo.addmm_(view_of(ds, rows, 1, opts).t(), view_of(const_cast<T*>(aL), rows, hL, opts));
        if (L > 1) {
          bias_grad(part + pk.w[2 * (L - 2) + 1], rows, hL, [&](int64_t c0, int64_t cr, T* cs) {
            dact_score(cur + c0 * hL, ds + c0, w_out, aL + c0 * hL, cs, cr, hL, sigm);
          });
        } else {
          // one hidden layer: a_L is a_1, whose bias is fc1's (summed per sample into dqterm)
          for (int64_t r = 0; r < rows; ++r) {
            for (int64_t j = 0; j < hL; ++j) cur[r * hL + j] = ds[r] * w_out[j];
          }
          dact_qterm(cur, aL, dqtp, bix, T_, rows, hL, sigm);
        }
        // hidden layers L..2: dW_l += dA_lᵀ a_{l−1}; dA_{l−1} = dA_l W_l ⊙ act', whose column sums
        // are the bias gradient of layer l − 1 (layer 1: summed per sample into dqterm)
        for (int64_t l = L - 1; l >= 1; --l) {
          const int64_t hl = net.h[l], hp = net.h[l - 1];
          const T* a_prev = ap + net.off[l - 1] + r0 * hp;
          const at::Tensor da_t = view_of(cur, rows, hl, opts);
          at::Tensor dwl = view_of(part + pk.w[2 * (l - 1)], hl, hp, opts);
          dwl.addmm_(da_t.t(), view_of(const_cast<T*>(a_prev), rows, hp, opts));
          gemm_nn<T>(rows, hp, hl, cur, hl, net.w[l - 1].const_data_ptr<T>(), hp, nxt, hp, opts);
          if (l > 1) {
            bias_grad(part + pk.w[2 * (l - 2) + 1], rows, hp, [&](int64_t c0, int64_t cr, T* cs) {
              dact_bias(nxt + c0 * hp, a_prev + c0 * hp, cs, cr, hp, sigm);
            });
          } else {
            dact_qterm(nxt, a_prev, dqtp, bix, T_, rows, hp, sigm);
          }
          std::swap(cur, nxt);
        }
        // layer 1, per sample b: dk = dA_1 M_b (in place when its steps are consecutive),
        // dMᵀ_b = K_bᵀ dA_1, folded into dW_kd, dW_p and dq_b; the block's sums then go into
        // the group's partial
        std::fill(acc_kd, acc_kd + 2 * n1, T(0));  // acc_kd and acc_p
        for_each_sample(bix, rows, T_, [&](int64_t s0, int64_t n, int64_t b) {
          const T* qb = qp + b * D;
          const T* da = cur + s0 * h1;
          const bool run = keys_run(bix + s0, n);
          const T* ks = kp + bix[s0] * D;
          if (!run) {
            gather_keys(x, kp, bix + s0, n, D);
            ks = x;
          }
          sample_m(m, wkd, wp, qb, h1, D);
          gemm_nn<T>(n, D, h1, da, h1, m, D, run ? dkp + bix[s0] * D : dx, D, opts);
          if (!run) scatter_rows(dkp, dx, bix + s0, n, D);
          transpose_keys(xt, ks, n, D);
          gemm_nn<T>(D, h1, n, xt, n, da, h1, dmt, h1, opts);
          fold_sample(acc_kd, acc_p, dqp + b * D, dmt, qb, wpt, D, h1);
        });
        add_inplace(part, acc_kd, n1);
        add_inplace(part + pk.p, acc_p, n1);
      }
      // dk is 0 at the padded steps of the block's samples
      zero_padded(dkp, bix, rows, b0 * T_, b1 * T_, D);
    }
  });
}

void check_biases(const Net& net, const at::Tensor& fc1_bias, at::TensorList biases) {
  const auto dt = net.w[0].scalar_type();
  check_tensor(fc1_bias, "fc1_bias", dt, 1);
  TORCH_CHECK(fc1_bias.size(0) == net.h[0], "udg_fast::din_attention (CPU): fc1_bias must be [",
              net.h[0], "], got ", fc1_bias.sizes());
  TORCH_CHECK(biases.size() == net.w.size(), "udg_fast::din_attention (CPU): biases must have one "
              "tensor per weight (", net.w.size(), "), got ", biases.size());
  for (size_t l = 0; l < biases.size(); ++l) {
    check_tensor(biases[l], "biases[i]", dt, 1);
    TORCH_CHECK(biases[l].size(0) == net.w[l].size(0), "udg_fast::din_attention (CPU): biases[",
                l, "] must be [", net.w[l].size(0), "], got ", biases[l].sizes());
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> din_attention_forward(
    const at::Tensor& query, const at::Tensor& keys, const at::Tensor& idx,
    const at::Tensor& fc1_weight, const at::Tensor& fc1_bias, at::TensorList weights,
    at::TensorList biases, c10::string_view activation) {
  // The op computes in its inputs' dtype: the ATen calls inside must not be autocast (under
  // torch.autocast("cpu", bfloat16) they would turn the q term into bfloat16).
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const bool sigm = parse_act(activation) == Act::kSigmoid;
  const Net net = make_net(query, keys, idx, fc1_weight, weights);
  check_biases(net, fc1_bias, biases);
  at::Tensor scores = at::zeros({net.B, net.T}, query.options());
  at::Tensor acts = at::empty({net.N * net.sum_h}, query.options());
  if (net.N == 0) return {scores, acts};
  const at::Tensor qc = query.contiguous(), kc = keys.contiguous(), ic = idx.contiguous();
  const int64_t* ix = ic.const_data_ptr<int64_t>();
  const Blocks blk = make_blocks(net, ix);
  const Fc1 fc1 = split_fc1(fc1_weight.contiguous(), net.D);
  const at::Tensor qterm = at::addmm(fc1_bias, qc, fc1.qd.t());  // [B, h1]
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "udg_fast::din_attention (CPU)", [&] {
    forward_impl<scalar_t>(net, blk, qc, kc, ix, fc1, qterm, biases, sigm, scores, acts);
  });
  return {scores, acts};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>,
           std::vector<at::Tensor>>
din_attention_backward(const at::Tensor& grad_scores, const at::Tensor& query,
                       const at::Tensor& keys, const at::Tensor& idx, const at::Tensor& acts,
                       const at::Tensor& fc1_weight, at::TensorList weights,
                       c10::string_view activation) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);  // as the forward
  const bool sigm = parse_act(activation) == Act::kSigmoid;
  const Net net = make_net(query, keys, idx, fc1_weight, weights);
  check_tensor(grad_scores, "grad_scores", query.scalar_type(), 2);
  TORCH_CHECK(grad_scores.size(0) == net.B && grad_scores.size(1) == net.T,
              "udg_fast::din_attention_backward (CPU): grad_scores must be [", net.B, ", ", net.T,
              "], got ", grad_scores.sizes());
  check_tensor(acts, "acts", query.scalar_type(), 1);
  TORCH_CHECK(acts.size(0) == net.N * net.sum_h, "udg_fast::din_attention_backward (CPU): acts "
              "must hold N·Σh = ", net.N * net.sum_h, " values (the forward's), got ", acts.size(0));
  const int64_t D = net.D, h1 = net.h[0], L = static_cast<int64_t>(net.h.size());
  const Packed pk = packed_layout(net);

  const auto opts = query.options();
  std::vector<at::Tensor> dws, dbs;
  if (net.N == 0) {
    for (const auto& w : net.w) {
      dws.push_back(at::zeros_like(w));
      dbs.push_back(at::zeros({w.size(0)}, opts));
    }
    return {at::zeros({net.B, D}, opts), at::zeros({net.B, net.T, D}, opts),
            at::zeros_like(fc1_weight), at::zeros({h1}, opts), dws, dbs};
  }
  // Every row of dq, dk and dqterm is written by the block holding its sample.
  at::Tensor dq = at::empty({net.B, D}, opts);
  at::Tensor dk = at::empty({net.B, net.T, D}, opts);
  at::Tensor dqterm = at::empty({net.B, h1}, opts);
  const at::Tensor gc = grad_scores.contiguous(), qc = query.contiguous(), kc = keys.contiguous(),
                   ic = idx.contiguous(), ac = acts.contiguous();
  const int64_t* ix = ic.const_data_ptr<int64_t>();
  const Blocks blk = make_blocks(net, ix);
  const int64_t threads = at::get_num_threads();
  const int64_t ngroup = group_count(blk.count(), threads);
  at::Tensor partials = at::zeros({ngroup, pk.size}, opts);
  const Fc1 fc1 = split_fc1(fc1_weight.contiguous(), D);
  at::Tensor total = at::empty({pk.size}, opts);
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "udg_fast::din_attention_backward (CPU)", [&] {
    backward_impl<scalar_t>(net, blk, gc, qc, kc, ix, ac, fc1, sigm, dq, dk, dqterm, partials, pk);
    sum_groups(partials.const_data_ptr<scalar_t>(), ngroup, pk.size,
               total.mutable_data_ptr<scalar_t>());
  });
  // the q term: dq += dqterm W_qd, dW_qd = dqtermᵀ q, db_1 = Σ_b dqterm
  dq.addmm_(dqterm, fc1.qd);
  const at::Tensor dw_qd = dqterm.t().mm(qc);
  const at::Tensor dw_kd = total.narrow(0, 0, D * h1).view({D, h1}).t();
  const at::Tensor dw_p = total.narrow(0, pk.p, D * h1).view({D, h1}).t();
  at::Tensor dw1 = at::cat({dw_qd, dw_kd, dw_qd - dw_kd, dw_p}, 1);
  for (int64_t l = 0; l < L; ++l) {
    const auto& w = net.w[l];
    dws.push_back(total.narrow(0, pk.w[2 * l], w.numel()).view(w.sizes()));
    if (l + 1 < L) dbs.push_back(total.narrow(0, pk.w[2 * l + 1], w.size(0)));
  }
  // the score bias: Σ of grad_scores over the valid steps, one pairwise ATen sum
  dbs.push_back(gc.reshape({-1}).index_select(0, ic).sum().reshape({1}));
  return {dq, dk, dw1, dqterm.sum(0), dws, dbs};
}

}  // namespace udg_fast::cpu

TORCH_LIBRARY_IMPL(udg_fast, CPU, m) {
  m.impl("din_attention", &udg_fast::cpu::din_attention_forward);
  m.impl("din_attention_backward", &udg_fast::cpu::din_attention_backward);
}
