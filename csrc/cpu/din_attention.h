// CPU kernels of udg_fast::din_attention (DIN's local activation unit on the valid history
// steps). Declared here so that the ctest binary (csrc/tests/) can call them directly.
#pragma once
#include <ATen/ATen.h>
#include <tuple>
#include <vector>

namespace udg_fast::cpu {

// query [B, D], keys [B, T, D], idx [N] int64 (strictly increasing flat positions b·T + t of the
// valid steps), fc1_weight [h1, 4D], fc1_bias [h1], weights/biases: the layers after fc1, the last
// one [1, h_L] (the score). float32 or float64.
// Returns (scores [B, T], zero at the positions not in idx; acts [N · Σ h]: every hidden layer's
// activations, layer l as a contiguous [N, h_l] block, for the backward).
std::tuple<at::Tensor, at::Tensor> din_attention_forward(
    const at::Tensor& query, const at::Tensor& keys, const at::Tensor& idx,
    const at::Tensor& fc1_weight, const at::Tensor& fc1_bias, at::TensorList weights,
    at::TensorList biases, c10::string_view activation);

// Returns (grad_query [B, D], grad_keys [B, T, D], grad_fc1_weight [h1, 4D], grad_fc1_bias [h1],
//          grad_weights, grad_biases).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>,
           std::vector<at::Tensor>>
din_attention_backward(const at::Tensor& grad_scores, const at::Tensor& query,
                       const at::Tensor& keys, const at::Tensor& idx, const at::Tensor& acts,
                       const at::Tensor& fc1_weight, at::TensorList weights,
                       c10::string_view activation);

}  // namespace udg_fast::cpu
