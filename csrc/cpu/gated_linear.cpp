// CPU kernels of udg_fast::gated_linear, Eq. 7 of the UDG paper:
//
//     out = act( W (γ · σ(g) ⊙ x) + b )          act = ReLU or identity
//
// Fused in the cache sense. The rows are cut into blocks of ~1 MiB of work (block_rows()); per
// block:
//   forward   xs = γ σ(g) ⊙ x into a block buffer (cache-resident) → GEMM straight into the
//             output rows → bias + ReLU in place, while the rows are still in cache.
//   backward  dpre = dy ⊙ relu'(out) (0 where out <= 0, as torch) and db += Σ_rows dpre in one pass → dxs = dpre · W written
//             straight into dx's rows → one pass that recomputes s = σ(g), writes xs = γ s ⊙ x
//             into a block buffer and turns dxs into dg = dxs ⊙ xs ⊙ (1 − s)
//             (= dxs ⊙ x ⊙ γ s(1 − s)) and dx = dxs ⊙ γ s → dW_partial += dpreᵀ · xs.
// No [B, K] or [B, N] temporaries: only per-thread block buffers (kept between calls), plus one
// [N, K] dW partial per extra group of blocks (cpu/common.h: kGroupsPerThread per thread). Blocks are handed out dynamically, but the
// partials belong to fixed groups of blocks, not to whichever thread runs them, and are summed in
// group order: the gradients are bit-identical run to run for a given thread count.
//
// The block GEMMs go through cpu/common.h's gemm_nn (oneDNN's brgemm micro-kernel; at::mm_out
// without it) and ATen's addmm_ for dW (MKL here). Inside at::parallel_for they run
// single-threaded, one block GEMM per thread. This file must be
// compiled with -fopenmp (see cpu/common.h).
//
// Elementwise work (float32) is vectorised by GCC in function clones for x86-64-v4 (AVX-512),
// x86-64-v3 (AVX2 + FMA) and baseline x86-64, picked at load time (ifunc): the extension is
// compiled without -mavx*, so at::vec::Vectorized would be its scalar fallback here, and std::exp
// does not vectorise. σ uses a Cephes-style expf (range reduction + polynomial): max 2.7 ulp
// against float64, torch.sigmoid's own max being 2.5 ulp (measured on 3M points). float64 (for
// gradcheck) uses plain scalar code with std::exp.
//
// NaN / Inf: as in the eager formula, checked element by element against it. A NaN in x or g
// gives NaN in that row's output; ReLU is `v < 0 ? 0 : v`, so relu(NaN) = NaN like torch.relu
// (max(v, 0) would drop it); the backward mask is a select (out <= 0 ? 0 : dy), torch's
// threshold_backward, so a NaN output passes dy (`out > 0 ? dy : 0` dropped it); g = ±Inf is a gate of exactly γ or 0.
#include "cpu/gated_linear.h"
#include "cpu/common.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

namespace udg_fast::cpu {

namespace {

using namespace detail;

// Rows per block: as many as keep one block's working set — the backward's s, 1 − s, xs and the
// dx rows (4 K values per row) plus dpre (N) — within ~1 MiB (Zen 4's L2 per core), so it stays
// in cache between the elementwise passes and the GEMMs (128 rows at K=400, N=200; 288 at K=200,
// N=80); a multiple of 32, 32 to 1024 rows; and no more rows than give every thread a block.
// Blocks of >= 128 rows run the GEMMs as fast as one full-size call (measured, one thread:
// 7.85 ms blocked vs 7.92 ms full for B=4096, 400→200; 64-row blocks lose ~4%).
constexpr int64_t kBlockBytes = int64_t(1) << 20;

int64_t block_rows(int64_t B, int64_t K, int64_t N, int64_t elem_size, int64_t threads) {
  const int64_t row_bytes = std::max<int64_t>(1, elem_size * (4 * K + N));
  const int64_t rows = std::clamp<int64_t>(kBlockBytes / row_bytes / 32 * 32, 32, 1024);
  const int64_t per_thread = (B + threads - 1) / std::max<int64_t>(1, threads);
  return std::max<int64_t>(1, std::min(rows, (per_thread + 31) / 32 * 32));
}

bool is_relu(c10::string_view act) {
  TORCH_CHECK(act == "relu" || act == "none",
              "udg_fast::gated_linear: activation must be 'relu' or 'none', got '", act, "'");
  return act == "relu";
}

// ---- elementwise helpers --------------------------------------------------------------------

// xs[i] = (γ σ(g[i])) x[i]
template <typename T>
UDG_INLINE void gate_fwd_body(const T* __restrict x, const T* __restrict g, T* __restrict xs,
                              int64_t n, T gamma) {
  for (int64_t i = 0; i < n; ++i) {
    T si, omi;
    sigmoid2(g[i], si, omi);
    xs[i] = (si * gamma) * x[i];
  }
}

// out[r, :] = act(out[r, :] + b) for rows r of a [rows, N] block.
template <typename T>
UDG_INLINE void bias_act_body(T* __restrict out, const T* __restrict b, int64_t rows, int64_t N,
                              bool relu) {
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict o = out + r * N;
    if (b != nullptr && relu) {
      for (int64_t j = 0; j < N; ++j) o[j] = relu_nan(o[j] + b[j]);
    } else if (b != nullptr) {
      for (int64_t j = 0; j < N; ++j) o[j] = o[j] + b[j];
    } else if (relu) {
      for (int64_t j = 0; j < N; ++j) o[j] = relu_nan(o[j]);
    }
  }
}

// dpre = out <= 0 ? 0 : dy (when dpre != nullptr; else dpre is dy itself), and db += Σ_r dpre[r, :]
// in row order.
template <typename T>
UDG_INLINE void dpre_body(const T* __restrict dy, const T* __restrict out, T* __restrict dpre,
                          T* __restrict db, int64_t rows, int64_t N) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict d = dy + r * N;
    if (dpre != nullptr) {
      const T* __restrict o = out + r * N;
      T* __restrict p = dpre + r * N;
      for (int64_t j = 0; j < N; ++j) {
        const T v = o[j] <= T(0) ? T(0) : d[j];  // torch's threshold_backward: a NaN output passes dy
        p[j] = v;
        db[j] += v;
      }
    } else {
      for (int64_t j = 0; j < N; ++j) db[j] += d[j];
    }
  }
}

// The backward's one elementwise pass over a block, after dxs = dpre · W has been written into
// dx: recompute s = σ(g) and 1 − s, then
//   xs = (γ s) x            (into the block buffer, for dW = dpreᵀ · xs)
//   dg = dxs ⊙ xs ⊙ (1 − s) (= dxs ⊙ x ⊙ γ s(1 − s))
//   dx = dxs ⊙ γ s          (in place)
// One pass instead of a recompute pass (before the GEMM) plus a dx/dg pass: 3 loads and 3 stores
// per element instead of 6 and 5, and no σ / 1 − σ buffers. Measured, one thread, B=4096,
// 200→80: backward 4.2 → 3.8 ms (GEMM-only 3.1 ms).
template <typename T>
UDG_INLINE void gate_bwd_body(const T* __restrict x, const T* __restrict g, T* __restrict dx,
                              T* __restrict dg, T* __restrict xs, int64_t n, T gamma) {
  for (int64_t i = 0; i < n; ++i) {
    T si, omi;
    sigmoid2(g[i], si, omi);
    const T gs = si * gamma;
    const T xsi = gs * x[i];
    const T d = dx[i];
    xs[i] = xsi;
    dg[i] = (d * xsi) * omi;
    dx[i] = d * gs;
  }
}

// float32: one vectorised clone per ISA level. float64: plain.
UDG_CLONES void gate_fwd(const float* x, const float* g, float* xs, int64_t n, float gamma) {
  gate_fwd_body<float>(x, g, xs, n, gamma);
}
void gate_fwd(const double* x, const double* g, double* xs, int64_t n, double gamma) {
  gate_fwd_body<double>(x, g, xs, n, gamma);
}
UDG_CLONES void bias_act(float* out, const float* b, int64_t rows, int64_t N, bool relu) {
  bias_act_body<float>(out, b, rows, N, relu);
}
void bias_act(double* out, const double* b, int64_t rows, int64_t N, bool relu) {
  bias_act_body<double>(out, b, rows, N, relu);
}
UDG_CLONES void dpre_rows(const float* dy, const float* out, float* dpre, float* db, int64_t rows,
                          int64_t N) {
  dpre_body<float>(dy, out, dpre, db, rows, N);
}
void dpre_rows(const double* dy, const double* out, double* dpre, double* db, int64_t rows,
               int64_t N) {
  dpre_body<double>(dy, out, dpre, db, rows, N);
}
UDG_CLONES void gate_bwd(const float* x, const float* g, float* dx, float* dg, float* xs,
                         int64_t n, float gamma) {
  gate_bwd_body<float>(x, g, dx, dg, xs, n, gamma);
}
void gate_bwd(const double* x, const double* g, double* dx, double* dg, double* xs, int64_t n,
              double gamma) {
  gate_bwd_body<double>(x, g, dx, dg, xs, n, gamma);
}

// ---- argument checks ------------------------------------------------------------------------

void check_2d(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), "udg_fast::gated_linear (CPU): ", name,
              " must be a CPU tensor, got device ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, "udg_fast::gated_linear (CPU): ", name, " has dtype ",
              t.scalar_type(), ", expected ", dtype, " (the dtype of x)");
  TORCH_CHECK(t.dim() == 2, "udg_fast::gated_linear (CPU): ", name,
              " must be 2-D, got shape ", t.sizes());
}

void check_common(const at::Tensor& x, const at::Tensor& g, const at::Tensor& w) {
  TORCH_CHECK(x.device().is_cpu(), "udg_fast::gated_linear (CPU): x must be a CPU tensor, got ",
              x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "udg_fast::gated_linear (CPU): x must be float32 or float64, got ", x.scalar_type());
  check_2d(x, "x", x.scalar_type());
  check_2d(g, "gate_logits", x.scalar_type());
  check_2d(w, "weight", x.scalar_type());
  TORCH_CHECK(g.sizes() == x.sizes(), "udg_fast::gated_linear (CPU): gate_logits must have the "
              "shape of x ", x.sizes(), ", got ", g.sizes());
  TORCH_CHECK(w.size(1) == x.size(1), "udg_fast::gated_linear (CPU): weight must be [N, ",
              x.size(1), "] (K = x.size(1)), got ", w.sizes());
}

template <typename T>
void forward_impl(const at::Tensor& x, const at::Tensor& g, const at::Tensor& w,
                  const at::Tensor* b, at::Tensor& out, bool relu, T gamma) {
  const int64_t B = x.size(0), K = x.size(1), N = w.size(0);
  const T* xp = x.const_data_ptr<T>();
  const T* gp = g.const_data_ptr<T>();
  const T* bp = b != nullptr ? b->const_data_ptr<T>() : nullptr;
  T* op = out.mutable_data_ptr<T>();
  const at::Tensor wt = w.t().contiguous();  // [K, N] row-major for the block GEMMs
  const T* wtp = wt.const_data_ptr<T>();
  const int64_t threads = at::get_num_threads();
  const int64_t blk_rows = block_rows(B, K, N, sizeof(T), threads);
  const int64_t nblk = (B + blk_rows - 1) / blk_rows;
  parallel_items<T>(nblk, threads, std::min(blk_rows, B) * K, [&](int64_t blk, T* xs) {
    const int64_t r0 = blk * blk_rows, rows = std::min(blk_rows, B - r0);
    gate_fwd(xp + r0 * K, gp + r0 * K, xs, rows * K, gamma);
    gemm_nn<T>(rows, N, K, xs, K, wtp, N, op + r0 * N, N, x.options());
    if (bp != nullptr || relu) bias_act(op + r0 * N, bp, rows, N, relu);
  });
}

template <typename T>
void backward_impl(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& g,
                   const at::Tensor& w, const at::Tensor& out, bool relu, T gamma, at::Tensor& dx,
                   at::Tensor& dg, at::Tensor& dw, at::Tensor& db) {
  const int64_t B = x.size(0), K = x.size(1), N = w.size(0);
  const int64_t threads = at::get_num_threads();
  const int64_t blk_rows = block_rows(B, K, N, sizeof(T), threads);
  const int64_t nblk = (B + blk_rows - 1) / blk_rows;
  // Groups of blocks with their own dW / db partials, summed in group order (cpu/common.h).
  const int64_t ngroup = group_count(nblk, threads);
  // group 0 accumulates straight into dw; the others into one [ngroup - 1, N, K] allocation
  at::Tensor dw_extra = at::empty({ngroup - 1, N, K}, x.options());
  at::Tensor db_part = at::zeros({ngroup, N}, x.options());

  const T* xp = x.const_data_ptr<T>();
  const T* gp = g.const_data_ptr<T>();
  const T* dyp = dy.const_data_ptr<T>();
  const T* outp = out.const_data_ptr<T>();
  T* dxp = dx.mutable_data_ptr<T>();
  T* dgp = dg.mutable_data_ptr<T>();
  T* dbp = db_part.mutable_data_ptr<T>();
  const int64_t cap = std::min(blk_rows, B);
  const auto opts = x.options();

  // scratch per thread: xs = γ σ(g) ⊙ x (cap × K), then dpre (cap × N, relu only; without ReLU
  // dpre is dy itself)
  parallel_items<T>(ngroup, threads, cap * (K + (relu ? N : 0)), [&](int64_t grp, T* xsp) {
    T* dprep = relu ? xsp + cap * K : nullptr;
    at::Tensor dwg = grp == 0 ? dw : dw_extra[grp - 1];
    const int64_t blk_begin = grp * nblk / ngroup, blk_end = (grp + 1) * nblk / ngroup;
    for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
      const int64_t r0 = blk * blk_rows, rows = std::min(blk_rows, B - r0);
      // dpre = dy where out > 0 or NaN, else 0; db_grp += Σ_rows dpre
      dpre_rows(dyp + r0 * N, outp + r0 * N, dprep, dbp + grp * N, rows, N);
      const T* dpre_p = relu ? dprep : dyp + r0 * N;
      const at::Tensor dpre = view_of(const_cast<T*>(dpre_p), rows, N, opts);
      // dxs = dpre · W, straight into dx's rows
      gemm_nn<T>(rows, K, N, dpre_p, N, w.const_data_ptr<T>(), K, dxp + r0 * K, K, opts);
      // σ(g) recomputed; xs into the buffer; dg, and dx in place, from dxs
      gate_bwd(xp + r0 * K, gp + r0 * K, dxp + r0 * K, dgp + r0 * K, xsp, rows * K, gamma);
      // dW_grp += dpreᵀ · xs
      const at::Tensor xs = view_of(xsp, rows, K, opts);
      if (blk == blk_begin) {
        at::mm_out(dwg, dpre.t(), xs);
      } else {
        dwg.addmm_(dpre.t(), xs);
      }
    }
  });

  // Sum the partials in group order (element ranges in parallel: the order per element is fixed).
  if (ngroup > 1) {
    T* dwp = dw.mutable_data_ptr<T>();
    const T* ep = dw_extra.const_data_ptr<T>();
    at::parallel_for(0, N * K, 16384, [&](int64_t e0, int64_t e1) {
      for (int64_t i = 0; i < ngroup - 1; ++i) add_inplace(dwp + e0, ep + i * N * K + e0, e1 - e0);
    });
  }
  T* out_db = db.mutable_data_ptr<T>();
  std::copy(dbp, dbp + N, out_db);
  for (int64_t i = 1; i < ngroup; ++i) add_inplace(out_db, dbp + i * N, N);
}

}  // namespace

at::Tensor gated_linear_forward(const at::Tensor& x, const at::Tensor& gate_logits,
                                const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                c10::string_view activation, double gate_scale) {
  const bool relu = is_relu(activation);
  check_common(x, gate_logits, weight);
  const at::Tensor* b = nullptr;
  at::Tensor bc;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->device().is_cpu(), "udg_fast::gated_linear (CPU): bias must be a CPU "
                "tensor, got device ", bias->device());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), "udg_fast::gated_linear (CPU): bias has "
                "dtype ", bias->scalar_type(), ", expected ", x.scalar_type(), " (the dtype of x)");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0),
                "udg_fast::gated_linear (CPU): bias must be [", weight.size(0),
                "] (N = weight.size(0)), got ", bias->sizes());
    bc = bias->contiguous();
    b = &bc;
  }
  const at::Tensor xc = x.contiguous(), gc = gate_logits.contiguous(), wc = weight.contiguous();
  at::Tensor out = at::empty({x.size(0), weight.size(0)}, x.options());
  if (x.size(0) == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "udg_fast::gated_linear (CPU)", [&] {
    forward_impl<scalar_t>(xc, gc, wc, b, out, relu, static_cast<scalar_t>(gate_scale));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gated_linear_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& gate_logits,
    const at::Tensor& weight, const at::Tensor& out, c10::string_view activation,
    double gate_scale) {
  const bool relu = is_relu(activation);
  check_common(x, gate_logits, weight);
  check_2d(grad_out, "grad_out", x.scalar_type());
  check_2d(out, "out", x.scalar_type());
  const int64_t B = x.size(0), K = x.size(1), N = weight.size(0);
  TORCH_CHECK(grad_out.size(0) == B && grad_out.size(1) == N,
              "udg_fast::gated_linear_backward (CPU): grad_out must be [", B, ", ", N,
              "] ([x.size(0), weight.size(0)]), got ", grad_out.sizes());
  TORCH_CHECK(out.size(0) == B && out.size(1) == N,
              "udg_fast::gated_linear_backward (CPU): out must be [", B, ", ", N,
              "] ([x.size(0), weight.size(0)]), got ", out.sizes());
  const at::Tensor dyc = grad_out.contiguous(), xc = x.contiguous(),
                   gc = gate_logits.contiguous(), wc = weight.contiguous(),
                   oc = out.contiguous();
  at::Tensor dx = at::empty({B, K}, x.options());
  at::Tensor dg = at::empty({B, K}, x.options());
  if (B == 0) {
    return {dx, dg, at::zeros({N, K}, x.options()), at::zeros({N}, x.options())};
  }
  at::Tensor dw = at::empty({N, K}, x.options());
  at::Tensor db = at::empty({N}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "udg_fast::gated_linear_backward (CPU)", [&] {
    backward_impl<scalar_t>(dyc, xc, gc, wc, oc, relu, static_cast<scalar_t>(gate_scale), dx, dg,
                            dw, db);
  });
  return {dx, dg, dw, db};
}

}  // namespace udg_fast::cpu

TORCH_LIBRARY_IMPL(udg_fast, CPU, m) {
  m.impl("gated_linear", &udg_fast::cpu::gated_linear_forward);
  m.impl("gated_linear_backward", &udg_fast::cpu::gated_linear_backward);
}
