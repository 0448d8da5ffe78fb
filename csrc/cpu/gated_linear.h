// CPU kernels of udg_fast::gated_linear (Eq. 7 of the UDG paper). Declared here so that the
// ctest binary (csrc/tests/) can call them directly, without the dispatcher.
#pragma once
#include <ATen/ATen.h>
#include <optional>
#include <tuple>

namespace udg_fast::cpu {

// out[B, N] = act(W[N, K] (gate_scale * sigmoid(g[B, K]) ⊙ x[B, K]) + b[N])
at::Tensor gated_linear_forward(const at::Tensor& x, const at::Tensor& gate_logits,
                                const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                c10::string_view activation, double gate_scale);

// Returns (grad_x [B, K], grad_gate_logits [B, K], grad_weight [N, K], grad_bias [N]).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gated_linear_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& gate_logits,
    const at::Tensor& weight, const at::Tensor& out, c10::string_view activation,
    double gate_scale);

}  // namespace udg_fast::cpu
