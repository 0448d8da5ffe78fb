// CPU kernel of udg_fast::embedding_backward: the dense weight gradient of an embedding lookup,
//
//   dW[v] = Σ_{i : ids[i] = v} grad[i]        (v ≠ padding_idx; dW[padding_idx] = 0)
//
// the backward of every embedding lookup of the models (udg_fast/models/embedding.py), where the
// history fields alone are [B·T] = 102,400 rows at ml-100k's benchmark shape.
//
// Why a kernel: PyTorch's CPU options are all slow here. `embedding_dense_backward` sorts the ids;
// `index_put_(accumulate=True)` adds in input order but slows down with threads; `index_add_`
// scales with threads but is slower on one. This kernel is one pass over the ids, adding each
// gradient row into its table row in input order, and skipping the padded history steps (id 0,
// about half of them) instead of summing them and zeroing the row after. It runs on one thread
// on purpose: the pass is bound by reading the [N, d] gradient, and splitting the table rows
// between two threads (each scanning all ids) was slower than one thread (0.63 vs 0.36 ms for
// ids [2048, 50] into [1683, 18]), as each thread streams the whole gradient through its caches.
// One thread also makes the result independent of the thread count: every row summed in input
// order. Measured (benchmarks/bench_embedding_backward.py, ids [2048, 50] into [1683, 18], wall
// clock, 2026-11-28; benchmarks/results/cpu-ops-2026-11-28b.md): 0.31 ms with one torch thread set
// (0.32 with two) against 2.4 (index_put_, one thread), 2.9 (index_add_, two threads) and
// 3.4 / 2.8 (embedding_dense_backward, one / two threads).
#include "cpu/embedding_backward.h"
#include "cpu/common.h"

#include <torch/library.h>

#include <cstdint>

namespace udg_fast::cpu {

namespace {

using namespace detail;

// out[ids[i]] += g[i] for every i with ids[i] ≠ pad, in input order (rows of width d; g's rows
// ld apart). Checks the ids in the same pass: returns the first i with ids[i] outside [0, V),
// or -1.
template <typename T>
UDG_INLINE int64_t accumulate_body(T* __restrict out, const T* __restrict g, int64_t ld,
                                   const int64_t* ids, int64_t n, int64_t d, int64_t V,
                                   int64_t pad) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = ids[i];
    if (v < 0 || v >= V) return i;
    if (v == pad) continue;
    T* __restrict o = out + v * d;
    const T* __restrict gi = g + i * ld;
    for (int64_t j = 0; j < d; ++j) o[j] += gi[j];
  }
  return -1;
}

UDG_CLONES int64_t accumulate(float* out, const float* g, int64_t ld, const int64_t* ids,
                              int64_t n, int64_t d, int64_t V, int64_t pad) {
  return accumulate_body<float>(out, g, ld, ids, n, d, V, pad);
}
int64_t accumulate(double* out, const double* g, int64_t ld, const int64_t* ids, int64_t n,
                   int64_t d, int64_t V, int64_t pad) {
  return accumulate_body<double>(out, g, ld, ids, n, d, V, pad);
}

}  // namespace

at::Tensor embedding_backward(const at::Tensor& grad, const at::Tensor& ids, int64_t num_rows,
                              int64_t padding_idx) {
  constexpr const char* op = "udg_fast::embedding_backward";
  TORCH_CHECK(grad.scalar_type() == at::kFloat || grad.scalar_type() == at::kDouble, op,
              " (CPU): grad must be float32 or float64, got ", grad.scalar_type());
  check_cpu_tensor(op, grad, "grad", grad.scalar_type(), "grad", 2);
  TORCH_CHECK(ids.device().is_cpu() && ids.scalar_type() == at::kLong && ids.dim() == 1, op,
              " (CPU): ids must be a 1-D int64 CPU tensor, got ", ids.scalar_type(), " ",
              ids.sizes(), " on ", ids.device());
  TORCH_CHECK(ids.size(0) == grad.size(0), op, " (CPU): ids must have one id per row of grad (",
              grad.size(0), "), got ", ids.size(0));
  TORCH_CHECK(num_rows >= 0, op, " (CPU): num_rows must be >= 0, got ", num_rows);
  // Rows may be strided (read in place): the models' history gradient arrives as a column slice
  // of the concatenated [B, T, n·d] one, and copying it first cost more than the pass itself
  // (1.0 of 1.4 ms for ids [2048, 50], d = 18 of 36).
  const at::Tensor gc = grad.stride(1) == 1 ? grad : grad.contiguous(), ic = ids.contiguous();
  const int64_t n = ic.size(0), d = gc.size(1), ld = gc.stride(0);
  const int64_t* ix = ic.const_data_ptr<int64_t>();
  at::Tensor out = at::zeros({num_rows, d}, gc.options());
  const int64_t pad = padding_idx;  // < 0: never equal to an id
  int64_t bad = -1;
  AT_DISPATCH_FLOATING_TYPES(gc.scalar_type(), "udg_fast::embedding_backward (CPU)", [&] {
    const scalar_t* g = gc.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    bad = accumulate(o, g, ld, ix, n, d, num_rows, pad);  // one thread: see the top of the file
  });
  TORCH_CHECK(bad < 0, op, " (CPU): ids must be in [0, num_rows = ", num_rows, "), got ids[", bad,
              "] = ", bad < 0 ? 0 : ix[bad]);
  return out;
}

}  // namespace udg_fast::cpu

TORCH_LIBRARY_IMPL(udg_fast, CPU, m) {
  m.impl("embedding_backward", &udg_fast::cpu::embedding_backward);
}
