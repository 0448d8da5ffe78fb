// CPU kernel of udg_fast::embedding_backward (the dense weight gradient of an embedding lookup).
// Declared here so that the ctest binary (csrc/tests/) can call it directly.
#pragma once
#include <ATen/ATen.h>

namespace udg_fast::cpu {

// grad [N, d] (float32 or float64; rows may be strided), ids [N] int64 in [0, num_rows);
// padding_idx < 0: none.
// Returns the [num_rows, d] gradient of the table: row v = Σ_{i: ids[i] = v} grad[i], summed in
// input order; the padding row is 0.
at::Tensor embedding_backward(const at::Tensor& grad, const at::Tensor& ids, int64_t num_rows,
                              int64_t padding_idx);

}  // namespace udg_fast::cpu
