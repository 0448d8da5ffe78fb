// The floating dtypes the CUDA kernels of udg_fast take (float32, bfloat16, float16): one
// dispatcher for every op in csrc/cuda/, so the supported set and its error message are the same.
#pragma once

#include <ATen/ATen.h>

namespace udg_fast::cuda {

// Calls f(tag) with a value of the C++ type of `t` (float, at::Half, at::BFloat16); any other
// dtype raises naming the op.
template <typename F>
void dispatch_float_types(at::ScalarType t, const char* op, F&& f) {
  switch (t) {
    case at::ScalarType::Float:
      f(float{});
      return;
    case at::ScalarType::Half:
      f(at::Half{});
      return;
    case at::ScalarType::BFloat16:
      f(at::BFloat16{});
      return;
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", t, "; expected float32, bfloat16 or float16");
  }
}

}  // namespace udg_fast::cuda
