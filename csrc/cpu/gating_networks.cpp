// CPU kernels of udg_fast::gating_networks: the UDG paper's gating networks (Eq. 6), one
// three-layer network per layer l of the prediction MLP, all reading the same input u:
//
//   a1_l = ReLU(u W1_lᵀ + b1_l)        (the L first layers stacked: one [L·H, Du] weight)
//   a2_l = ReLU(a1_l W2_l + b2_l)      (W2_l [H, H] in x @ W layout, as GatingNetworks stores it)
//   g_l  = a2_l W3_lᵀ + b3_l           (the gate logits; the sigmoid is fused into gated_linear)
//
// Fused in the cache sense, as gated_linear.cpp and din_attention.cpp: rows in blocks of ~256
// (one block's u, a1, a2 and logits ~1 MiB at the DIN/PNN sizes); per block the first layer is
// one GEMM into a1's rows, every network's second and third layers GEMMs on column blocks of a1
// and a2 (strided, in place), bias + ReLU applied while the rows are in cache. The backward walks
// the same blocks: dW3 / db3, da2 = dg W3 ⊙ [a2 > 0], dW2 / db2, da1's column block = da2 W2ᵀ,
// then da1 ⊙= [a1 > 0], dW1 / db1, du = da1 W1 — without the [B, L·H] gradient temporaries,
// the zero-filled slice gradients and the separate ReLU passes of the eager form. Weight and bias
// gradients: fixed groups of blocks with their own partials (bias sums per block first), summed in
// group order — bit-identical run to run for a given thread count.
//
// ReLU is `v < 0 ? 0 : v` (keeps NaN, like torch.relu); its backward a select on a > 0 (like
// threshold_backward).
#include "cpu/gating_networks.h"
#include "cpu/common.h"

#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace udg_fast::cpu {

namespace {

using namespace detail;

constexpr int64_t kBlockRows = 256;

// ---- elementwise passes over a block's rows (float32: vectorised clones; float64: plain) ----

// h[r, :n] = relu(h[r, :n] + b), rows with leading dimension ld
template <typename T>
UDG_INLINE void bias_relu_body(T* __restrict h, int64_t ld, const T* __restrict b, int64_t rows,
                               int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict hr = h + r * ld;
    for (int64_t j = 0; j < n; ++j) hr[j] = relu_nan(hr[j] + b[j]);
  }
}

// h[r, :n] += b
template <typename T>
UDG_INLINE void bias_body(T* __restrict h, const T* __restrict b, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict hr = h + r * n;
    for (int64_t j = 0; j < n; ++j) hr[j] += b[j];
  }
}

// d[r, :n] = a[r, :n] > 0 ? d : 0; colsum += d[r, :n]   (d and a with their leading dimensions)
template <typename T>
UDG_INLINE void drelu_colsum_body(T* __restrict d, int64_t ldd, const T* __restrict a, int64_t lda,
                                  T* __restrict colsum, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict dr = d + r * ldd;
    const T* __restrict ar = a + r * lda;
    for (int64_t j = 0; j < n; ++j) {
      const T v = ar[j] <= T(0) ? T(0) : dr[j];  // torch's threshold_backward: a NaN activation passes dr
      dr[j] = v;
      colsum[j] += v;
    }
  }
}

// colsum += Σ_r g[r, :n]
template <typename T>
UDG_INLINE void colsum_body(const T* __restrict g, T* __restrict colsum, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict gr = g + r * n;
    for (int64_t j = 0; j < n; ++j) colsum[j] += gr[j];
  }
}

#define UDG_DEF_PASSES(ATTR, S)                                                                \
  ATTR void bias_relu(S* h, int64_t ld, const S* b, int64_t rows, int64_t n) {                 \
    bias_relu_body<S>(h, ld, b, rows, n);                                                      \
  }                                                                                            \
  ATTR void add_bias(S* h, const S* b, int64_t rows, int64_t n) { bias_body<S>(h, b, rows, n); } \
  ATTR void drelu_colsum(S* d, int64_t ldd, const S* a, int64_t lda, S* colsum, int64_t rows,  \
                         int64_t n) {                                                          \
    drelu_colsum_body<S>(d, ldd, a, lda, colsum, rows, n);                                     \
  }                                                                                            \
  ATTR void colsum_rows(const S* g, S* colsum, int64_t rows, int64_t n) {                      \
    colsum_body<S>(g, colsum, rows, n);                                                        \
  }
UDG_DEF_PASSES(UDG_CLONES, float)
UDG_DEF_PASSES(, double)
#undef UDG_DEF_PASSES

// ---- shapes ---------------------------------------------------------------------------------

struct Shapes {
  int64_t B = 0, Du = 0, L = 0, H = 0, LH = 0, max_k = 0;
  std::vector<int64_t> k;  // K_l
};

void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t dim) {
  check_cpu_tensor("udg_fast::gating_networks", t, name, dtype, "u", dim);
}

Shapes make_shapes(const at::Tensor& u, const at::Tensor& fc1_weight, const at::Tensor& fc2_weight,
                   at::TensorList fc3_weights) {
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble,
              "udg_fast::gating_networks (CPU): u must be float32 or float64, got ",
              u.scalar_type());
  const auto dt = u.scalar_type();
  check_tensor(u, "u", dt, 2);
  check_tensor(fc1_weight, "fc1_weight", dt, 2);
  check_tensor(fc2_weight, "fc2_weight", dt, 3);
  Shapes s;
  s.B = u.size(0);
  s.Du = u.size(1);
  s.L = fc2_weight.size(0);
  s.H = fc2_weight.size(1);
  s.LH = s.L * s.H;
  TORCH_CHECK(s.L >= 1 && fc2_weight.size(2) == s.H, "udg_fast::gating_networks (CPU): "
              "fc2_weight must be [L, H, H] with L >= 1, got ", fc2_weight.sizes());
  TORCH_CHECK(fc1_weight.size(0) == s.LH && fc1_weight.size(1) == s.Du,
              "udg_fast::gating_networks (CPU): fc1_weight must be [L·H = ", s.LH, ", ", s.Du,
              "], got ", fc1_weight.sizes());
  TORCH_CHECK(static_cast<int64_t>(fc3_weights.size()) == s.L, "udg_fast::gating_networks "
              "(CPU): fc3_weights must hold L = ", s.L, " tensors, got ", fc3_weights.size());
  for (const auto& w : fc3_weights) {
    check_tensor(w, "fc3_weights[l]", dt, 2);
    TORCH_CHECK(w.size(1) == s.H, "udg_fast::gating_networks (CPU): fc3_weights[l] must be "
                "[K_l, H = ", s.H, "], got ", w.sizes());
    s.k.push_back(w.size(0));
    s.max_k = std::max(s.max_k, w.size(0));
  }
  return s;
}

// Partial layout per group: dW1 [LH, Du], db1 [LH], dW2 [L, H, H], db2 [L, H], then per layer dW3_l
// [K_l, H] and db3_l [K_l], each at an aligned offset (they are returned as views of the total).
struct Partials {
  int64_t w1 = 0, b1 = 0, w2 = 0, b2 = 0, size = 0;
  std::vector<int64_t> w3, b3;
  explicit Partials(const Shapes& s) {
    w1 = 0;
    b1 = aligned_offset(w1 + s.LH * s.Du);
    w2 = aligned_offset(b1 + s.LH);
    b2 = aligned_offset(w2 + s.L * s.H * s.H);
    int64_t p = aligned_offset(b2 + s.LH);
    for (int64_t l = 0; l < s.L; ++l) {
      w3.push_back(p);
      p = aligned_offset(p + s.k[l] * s.H);
      b3.push_back(p);
      p = aligned_offset(p + s.k[l]);
    }
    size = p;
  }
};

// ---- forward / backward ----------------------------------------------------------------------

template <typename T>
void forward_impl(const Shapes& s, const at::Tensor& u, const at::Tensor& w1, const at::Tensor& b1,
                  const at::Tensor& w2, const at::Tensor& b2, const std::vector<at::Tensor>& w3,
                  const std::vector<at::Tensor>& b3, std::vector<at::Tensor>& logits,
                  at::Tensor& a1, at::Tensor& a2) {
  const int64_t B = s.B, Du = s.Du, H = s.H, LH = s.LH;
  const auto opts = u.options();
  // row-major [in, out] weights for x · Wᵀ
  const at::Tensor w1t = w1.t().contiguous();
  std::vector<at::Tensor> w3t;
  for (const auto& w : w3) w3t.push_back(w.t().contiguous());
  const T* up = u.const_data_ptr<T>();
  const T* w2p = w2.const_data_ptr<T>();
  const T* b2p = b2.const_data_ptr<T>();
  T* a1p = a1.mutable_data_ptr<T>();
  T* a2p = a2.mutable_data_ptr<T>();
  const int64_t nblk = (B + kBlockRows - 1) / kBlockRows;
  parallel_items<T>(nblk, at::get_num_threads(), 0, [&](int64_t i, T*) {
    const int64_t r0 = i * kBlockRows, rows = std::min(kBlockRows, B - r0);
    T* x1 = a1p + r0 * LH;
    T* x2 = a2p + r0 * LH;
    gemm_nn<T>(rows, LH, Du, up + r0 * Du, Du, w1t.const_data_ptr<T>(), LH, x1, LH, opts);
    bias_relu(x1, LH, b1.const_data_ptr<T>(), rows, LH);
    for (int64_t l = 0; l < s.L; ++l) {
      gemm_nn<T>(rows, H, H, x1 + l * H, LH, w2p + l * H * H, H, x2 + l * H, LH, opts);
      bias_relu(x2 + l * H, LH, b2p + l * H, rows, H);
      T* g = logits[l].mutable_data_ptr<T>() + r0 * s.k[l];
      gemm_nn<T>(rows, s.k[l], H, x2 + l * H, LH, w3t[l].const_data_ptr<T>(), s.k[l], g, s.k[l],
                 opts);
      add_bias(g, b3[l].const_data_ptr<T>(), rows, s.k[l]);
    }
  });
}

template <typename T>
void backward_impl(const Shapes& s, const Partials& P, const std::vector<at::Tensor>& grads,
                   const at::Tensor& u, const at::Tensor& a1, const at::Tensor& a2,
                   const at::Tensor& w1, const at::Tensor& w2, const std::vector<at::Tensor>& w3,
                   at::Tensor& du, at::Tensor& partials) {
  const int64_t B = s.B, Du = s.Du, H = s.H, LH = s.LH;
  const auto opts = u.options();
  std::vector<at::Tensor> w2t;  // W2_lᵀ row-major, for da1_l = da2 W2_lᵀ
  for (int64_t l = 0; l < s.L; ++l) w2t.push_back(w2[l].t().contiguous());
  const T* up = u.const_data_ptr<T>();
  const T* a1p = a1.const_data_ptr<T>();
  const T* a2p = a2.const_data_ptr<T>();
  T* dup = du.mutable_data_ptr<T>();
  const int64_t nblk = (B + kBlockRows - 1) / kBlockRows, ngroup = partials.size(0);
  const int64_t R = std::min(kBlockRows, B);
  // scratch: da1 (R × LH), da2 (R × H), a block's bias-gradient column sums (max(LH, K_max))
  const int64_t csz = std::max(LH, s.max_k);
  parallel_items<T>(ngroup, at::get_num_threads(), R * LH + R * H + csz, [&](int64_t grp, T* buf) {
    T* da1 = buf;
    T* da2 = da1 + R * LH;
    T* colsum = da2 + R * H;
    T* part = partials.mutable_data_ptr<T>() + grp * P.size;
    auto view = [&](const T* p, int64_t rows, int64_t cols, int64_t ld) {
      return at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1}, opts);
    };
    const int64_t blk_begin = grp * nblk / ngroup, blk_end = (grp + 1) * nblk / ngroup;
    for (int64_t i = blk_begin; i < blk_end; ++i) {
      const int64_t r0 = i * kBlockRows, rows = std::min(kBlockRows, B - r0);
      const T* x1 = a1p + r0 * LH;
      const T* x2 = a2p + r0 * LH;
      for (int64_t l = 0; l < s.L; ++l) {
        const int64_t K = s.k[l];
        const T* g = grads[l].const_data_ptr<T>() + r0 * K;
        // third layer: dW3_l += gᵀ a2_l, db3_l += Σ g
        at::Tensor dw3 = view(part + P.w3[l], K, H, H);
        dw3.addmm_(view(g, rows, K, K).t(), view(x2 + l * H, rows, H, LH));
        std::fill(colsum, colsum + K, T(0));
        colsum_rows(g, colsum, rows, K);
        add_inplace(part + P.b3[l], colsum, K);
        // da2 = g W3_l ⊙ [a2_l > 0]; db2_l += Σ da2
        gemm_nn<T>(rows, H, K, g, K, w3[l].const_data_ptr<T>(), H, da2, H, opts);
        std::fill(colsum, colsum + H, T(0));
        drelu_colsum(da2, H, x2 + l * H, LH, colsum, rows, H);
        add_inplace(part + P.b2 + l * H, colsum, H);
        // second layer: dW2_l += a1_lᵀ da2 ([in, out] layout); da1's column block = da2 W2_lᵀ
        at::Tensor dw2 = view(part + P.w2 + l * H * H, H, H, H);
        dw2.addmm_(view(x1 + l * H, rows, H, LH).t(), view(da2, rows, H, H));
        gemm_nn<T>(rows, H, H, da2, H, w2t[l].const_data_ptr<T>(), H, da1 + l * H, LH, opts);
      }
      // first layer: da1 ⊙= [a1 > 0]; db1 += Σ da1; dW1 += da1ᵀ u; du = da1 W1
      std::fill(colsum, colsum + LH, T(0));
      drelu_colsum(da1, LH, x1, LH, colsum, rows, LH);
      add_inplace(part + P.b1, colsum, LH);
      at::Tensor dw1 = view(part + P.w1, LH, Du, Du);
      dw1.addmm_(view(da1, rows, LH, LH).t(), view(up + r0 * Du, rows, Du, Du));
      gemm_nn<T>(rows, Du, LH, da1, LH, w1.const_data_ptr<T>(), Du, dup + r0 * Du, Du, opts);
    }
  });
}

}  // namespace

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> gating_networks_forward(
    const at::Tensor& u, const at::Tensor& fc1_weight, const at::Tensor& fc1_bias,
    const at::Tensor& fc2_weight, const at::Tensor& fc2_bias, at::TensorList fc3_weights,
    at::TensorList fc3_biases) {
  // computes in the inputs' dtype: the ATen calls inside must not be autocast
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const Shapes s = make_shapes(u, fc1_weight, fc2_weight, fc3_weights);
  const auto dt = u.scalar_type();
  check_tensor(fc1_bias, "fc1_bias", dt, 1);
  check_tensor(fc2_bias, "fc2_bias", dt, 3);
  TORCH_CHECK(fc1_bias.size(0) == s.LH, "udg_fast::gating_networks (CPU): fc1_bias must be [",
              s.LH, "], got ", fc1_bias.sizes());
  TORCH_CHECK(fc2_bias.size(0) == s.L && fc2_bias.size(1) == 1 && fc2_bias.size(2) == s.H,
              "udg_fast::gating_networks (CPU): fc2_bias must be [", s.L, ", 1, ", s.H, "], got ",
              fc2_bias.sizes());
  TORCH_CHECK(static_cast<int64_t>(fc3_biases.size()) == s.L, "udg_fast::gating_networks (CPU): "
              "fc3_biases must hold L = ", s.L, " tensors, got ", fc3_biases.size());
  std::vector<at::Tensor> w3, b3, logits;
  for (int64_t l = 0; l < s.L; ++l) {
    check_tensor(fc3_biases[l], "fc3_biases[l]", dt, 1);
    TORCH_CHECK(fc3_biases[l].size(0) == s.k[l], "udg_fast::gating_networks (CPU): fc3_biases[",
                l, "] must be [", s.k[l], "], got ", fc3_biases[l].sizes());
    w3.push_back(fc3_weights[l].contiguous());
    b3.push_back(fc3_biases[l].contiguous());
    logits.push_back(at::empty({s.B, s.k[l]}, u.options()));
  }
  at::Tensor a1 = at::empty({s.B, s.LH}, u.options());
  at::Tensor a2 = at::empty({s.B, s.LH}, u.options());
  if (s.B == 0) return {logits, a1, a2};
  const at::Tensor uc = u.contiguous(), w1 = fc1_weight.contiguous(), b1 = fc1_bias.contiguous(),
                   w2 = fc2_weight.contiguous(), b2 = fc2_bias.contiguous();
  AT_DISPATCH_FLOATING_TYPES(dt, "udg_fast::gating_networks (CPU)", [&] {
    forward_impl<scalar_t>(s, uc, w1, b1, w2, b2, w3, b3, logits, a1, a2);
  });
  return {logits, a1, a2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>,
           std::vector<at::Tensor>>
gating_networks_backward(at::TensorList grad_logits, const at::Tensor& u, const at::Tensor& a1,
                         const at::Tensor& a2, const at::Tensor& fc1_weight,
                         const at::Tensor& fc2_weight, at::TensorList fc3_weights) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);  // as forward
  const Shapes s = make_shapes(u, fc1_weight, fc2_weight, fc3_weights);
  const auto dt = u.scalar_type();
  TORCH_CHECK(static_cast<int64_t>(grad_logits.size()) == s.L, "udg_fast::gating_networks_"
              "backward (CPU): grad_logits must hold L = ", s.L, " tensors, got ",
              grad_logits.size());
  std::vector<at::Tensor> grads, w3;
  for (int64_t l = 0; l < s.L; ++l) {
    check_tensor(grad_logits[l], "grad_logits[l]", dt, 2);
    TORCH_CHECK(grad_logits[l].size(0) == s.B && grad_logits[l].size(1) == s.k[l],
                "udg_fast::gating_networks_backward (CPU): grad_logits[", l, "] must be [", s.B,
                ", ", s.k[l], "], got ", grad_logits[l].sizes());
    grads.push_back(grad_logits[l].contiguous());
    w3.push_back(fc3_weights[l].contiguous());
  }
  for (const auto* t : {&a1, &a2}) {
    check_tensor(*t, "a1/a2", dt, 2);
    TORCH_CHECK(t->size(0) == s.B && t->size(1) == s.LH, "udg_fast::gating_networks_backward "
                "(CPU): a1 and a2 must be [", s.B, ", ", s.LH, "] (the forward's), got ",
                t->sizes());
  }
  const Partials P(s);
  const auto opts = u.options();
  at::Tensor du = at::empty({s.B, s.Du}, opts);
  at::Tensor total = at::zeros({P.size}, opts);  // stays 0 for B = 0
  if (s.B > 0) {
    const int64_t nblk = (s.B + kBlockRows - 1) / kBlockRows;
    const int64_t ngroup = group_count(nblk, at::get_num_threads());
    at::Tensor partials = at::zeros({ngroup, P.size}, opts);
    const at::Tensor uc = u.contiguous(), a1c = a1.contiguous(), a2c = a2.contiguous(),
                     w1 = fc1_weight.contiguous(), w2 = fc2_weight.contiguous();
    AT_DISPATCH_FLOATING_TYPES(dt, "udg_fast::gating_networks_backward (CPU)", [&] {
      backward_impl<scalar_t>(s, P, grads, uc, a1c, a2c, w1, w2, w3, du, partials);
      sum_groups(partials.const_data_ptr<scalar_t>(), ngroup, P.size, total.mutable_data_ptr<scalar_t>());
    });
  }
  std::vector<at::Tensor> dw3, db3;
  for (int64_t l = 0; l < s.L; ++l) {
    dw3.push_back(total.narrow(0, P.w3[l], s.k[l] * s.H).view({s.k[l], s.H}));
    db3.push_back(total.narrow(0, P.b3[l], s.k[l]));
  }
  return {du,
          total.narrow(0, P.w1, s.LH * s.Du).view({s.LH, s.Du}),
          total.narrow(0, P.b1, s.LH),
          total.narrow(0, P.w2, s.L * s.H * s.H).view({s.L, s.H, s.H}),
          total.narrow(0, P.b2, s.LH).view({s.L, 1, s.H}),
          dw3,
          db3};
}

}  // namespace udg_fast::cpu

TORCH_LIBRARY_IMPL(udg_fast, CPU, m) {
  m.impl("gating_networks", &udg_fast::cpu::gating_networks_forward);
  m.impl("gating_networks_backward", &udg_fast::cpu::gating_networks_backward);
}
