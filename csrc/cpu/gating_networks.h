// CPU kernels of udg_fast::gating_networks (the UDG paper's gating networks GN^(l), Eq. 6, all L
// layers' at once). Declared here so that the ctest binary (csrc/tests/) can call them directly.
#pragma once
#include <ATen/ATen.h>
#include <tuple>
#include <vector>

namespace udg_fast::cpu {

// u [B, Du]; fc1_weight [L·H, Du], fc1_bias [L·H]; fc2_weight [L, H, H] (x @ W: [in, out]),
// fc2_bias [L, 1, H]; fc3_weights[l] [K_l, H], fc3_biases[l] [K_l]. float32 or float64.
// Returns (logits: one [B, K_l] per layer; a1 [B, L·H] and a2 [B, L·H], the two hidden ReLU
// activations (network l in columns l·H … (l+1)·H − 1), saved for the backward).
std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> gating_networks_forward(
    const at::Tensor& u, const at::Tensor& fc1_weight, const at::Tensor& fc1_bias,
    const at::Tensor& fc2_weight, const at::Tensor& fc2_bias, at::TensorList fc3_weights,
    at::TensorList fc3_biases);

// Returns (grad_u, grad_fc1_weight, grad_fc1_bias, grad_fc2_weight, grad_fc2_bias,
//          grad_fc3_weights, grad_fc3_biases).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>,
           std::vector<at::Tensor>>
gating_networks_backward(at::TensorList grad_logits, const at::Tensor& u, const at::Tensor& a1,
                         const at::Tensor& a2, const at::Tensor& fc1_weight,
                         const at::Tensor& fc2_weight, at::TensorList fc3_weights);

}  // namespace udg_fast::cpu
