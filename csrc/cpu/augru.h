// CPU kernels of udg_fast::augru (DIEN's AUGRU; a plain GRU when att is None). Declared here so
// that the ctest binary (csrc/tests/) can call them directly, without the dispatcher.
//
// Equations (gate order r, z, n as in torch.nn.GRU; the paper's update form):
//   r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
//   z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
//   n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))
//   h_t = (1 − a_t z_t) ⊙ h_{t-1} + a_t z_t ⊙ n_t         (a ≡ 1 without att)
// Steps t >= lengths[b] leave h unchanged and output zeros.
#pragma once
#include <ATen/ATen.h>
#include <optional>
#include <tuple>

namespace udg_fast::cpu {

// x [B, T, I], weight_ih [3H, I], weight_hh [3H, H], bias_ih/bias_hh [3H] or None, att [B, T] or
// None, lengths [B] int64 in [0, T] or None, h0 [B, H]. float32 or float64.
// Returns (outputs [B, T, H], h_n [B, H]).
std::tuple<at::Tensor, at::Tensor> augru_forward(
    const at::Tensor& x, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& bias_ih, const std::optional<at::Tensor>& bias_hh,
    const std::optional<at::Tensor>& att, const std::optional<at::Tensor>& lengths,
    const at::Tensor& h0);

// Reverse-time backward recomputing the gates from `outputs` (the saved h sequence).
// Returns (dx, dweight_ih, dweight_hh, dbias_ih [3H], dbias_hh [3H], datt [B, T], dh0 [B, H]);
// datt is zeros when att is None.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
augru_backward(const at::Tensor& grad_outputs, const at::Tensor& grad_h_n, const at::Tensor& x,
               const at::Tensor& weight_ih, const at::Tensor& weight_hh,
               const std::optional<at::Tensor>& bias_ih, const std::optional<at::Tensor>& bias_hh,
               const std::optional<at::Tensor>& att, const std::optional<at::Tensor>& lengths,
               const at::Tensor& h0, const at::Tensor& outputs);

}  // namespace udg_fast::cpu
