// The op schemas of udg_fast, in one place (torchao / extension-cpp layout).
//
// Each op has one implementation per dispatch key: csrc/cpu/<op>.cpp registers CPU,
// csrc/cuda/<op>.cu registers CUDA. The Python side (udg_fast/ops/<op>.py) registers the fake
// (meta) implementation and autograd for each op, and picks between backends.
#include <torch/library.h>
#include <torch/extension.h>

#include "build_config.h"

TORCH_LIBRARY(udg_fast, m) {
  // Eq. 7 of the UDG paper, one layer of the gated prediction MLP:
  //   out = act(W (gate_scale * sigmoid(gate_logits) ⊙ x) + b)
  // x, gate_logits: [B, K] contiguous; weight: [N, K]; bias: [N] or None; activation "relu"|"none".
  m.def(
      "gated_linear(Tensor x, Tensor gate_logits, Tensor weight, Tensor? bias, str activation, "
      "float gate_scale) -> Tensor");
  // Backward of gated_linear. `out` is the forward output (its sign is the ReLU mask).
  // Returns (grad_x [B, K], grad_gate_logits [B, K], grad_weight [N, K], grad_bias [N]).
  // grad_bias is always returned (Σ over rows of the pre-activation gradient); the caller drops
  // it when the layer has no bias.
  m.def(
      "gated_linear_backward(Tensor grad_out, Tensor x, Tensor gate_logits, Tensor weight, "
      "Tensor out, str activation, float gate_scale) -> (Tensor, Tensor, Tensor, Tensor)");

  // AUGRU / GRU (DIEN), see udg_fast/ops/augru.py for the equations.
  // x: [B, T, I]; weight_ih: [3H, I]; weight_hh: [3H, H]; bias_ih, bias_hh: [3H] or None;
  // att: [B, T] or None (a ≡ 1, plain GRU); lengths: [B] int64 or None (all T); h0: [B, H].
  // Returns (outputs [B, T, H], h_n [B, H]); outputs are zero at steps t >= lengths[b].
  m.def(
      "augru(Tensor x, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, Tensor? bias_hh, "
      "Tensor? att, Tensor? lengths, Tensor h0) -> (Tensor, Tensor)");
  // Backward of augru, recomputing the gates from the saved outputs (= the h sequence).
  // Returns (grad_x, grad_weight_ih, grad_weight_hh, grad_bias_ih [3H], grad_bias_hh [3H],
  //          grad_att [B, T] (zeros when att is None), grad_h0 [B, H]).
  m.def(
      "augru_backward(Tensor grad_outputs, Tensor grad_h_n, Tensor x, Tensor weight_ih, "
      "Tensor weight_hh, Tensor? bias_ih, Tensor? bias_hh, Tensor? att, Tensor? lengths, "
      "Tensor h0, Tensor outputs) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");

  // DIN's local activation unit (DIN and DIEN attention), see udg_fast/ops/din_attention.py:
  //   score = MLP([q, k, q − k, q ⊙ k]) on the valid steps only, 0 elsewhere.
  // query: [B, D]; keys: [B, T, D]; idx: [N] int64, the valid steps' flat positions b·T + t,
  // strictly increasing; fc1_weight: [h1, 4D]; fc1_bias: [h1]; weights/biases: the layers after
  // fc1, the last [1, h_L]; activation "sigmoid"|"relu" (every hidden layer).
  // Returns (scores [B, T], acts [N · Σh]: the hidden activations, saved for the backward).
  // CPU only: on CUDA the Python op runs its eager form (cuBLAS GEMMs), see there.
  m.def(
      "din_attention(Tensor query, Tensor keys, Tensor idx, Tensor fc1_weight, Tensor fc1_bias, "
      "Tensor[] weights, Tensor[] biases, str activation) -> (Tensor, Tensor)");
  // Backward of din_attention from its saved acts. Returns (grad_query, grad_keys,
  // grad_fc1_weight, grad_fc1_bias, grad_weights, grad_biases).
  m.def(
      "din_attention_backward(Tensor grad_scores, Tensor query, Tensor keys, Tensor idx, "
      "Tensor acts, Tensor fc1_weight, Tensor[] weights, str activation) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor[], Tensor[])");

  // The UDG gating networks GN^(l) of all L layers (Eq. 6), see udg_fast/ops/gating_networks.py:
  //   g_l = W3_l ReLU(ReLU(u W1_lᵀ + b1_l) W2_l + b2_l) + b3_l   (logits; σ is in gated_linear)
  // u: [B, Du]; fc1_weight: [L·H, Du] (the first layers stacked); fc1_bias: [L·H];
  // fc2_weight: [L, H, H] (x @ W layout); fc2_bias: [L, 1, H]; fc3_weights[l]: [K_l, H];
  // fc3_biases[l]: [K_l]. Returns (logits [B, K_l] per layer, a1 [B, L·H], a2 [B, L·H]: the
  // hidden activations, saved for the backward). CPU only, as din_attention.
  m.def(
      "gating_networks(Tensor u, Tensor fc1_weight, Tensor fc1_bias, Tensor fc2_weight, "
      "Tensor fc2_bias, Tensor[] fc3_weights, Tensor[] fc3_biases) -> (Tensor[], Tensor, Tensor)");
  // Backward of gating_networks from its saved a1, a2. Returns (grad_u, grad_fc1_weight,
  // grad_fc1_bias, grad_fc2_weight, grad_fc2_bias, grad_fc3_weights, grad_fc3_biases).
  m.def(
      "gating_networks_backward(Tensor[] grad_logits, Tensor u, Tensor a1, Tensor a2, "
      "Tensor fc1_weight, Tensor fc2_weight, Tensor[] fc3_weights) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor[], Tensor[])");

  // The dense weight gradient of an embedding lookup, see udg_fast/ops/embedding_backward.py:
  //   dW[v] = Σ_{i : ids[i] = v} grad[i], dW[padding_idx] = 0 (padding_idx < 0: none).
  // grad: [N, d]; ids: [N] int64 in [0, num_rows). Returns [num_rows, d]. CPU only.
  m.def("embedding_backward(Tensor grad, Tensor ids, int num_rows, int padding_idx) -> Tensor");
}

namespace {

// What this extension was compiled with; udg_fast.build_info() returns it.
pybind11::dict build_info() {
  pybind11::dict d;
  d["with_cuda"] = static_cast<bool>(UDG_FAST_WITH_CUDA);
  d["cuda_archs"] = std::string(UDG_FAST_CUDA_ARCHS);
  d["cuda_version"] = std::string(UDG_FAST_CUDA_VERSION);
  d["torch_version"] = std::string(UDG_FAST_TORCH_VERSION);
  d["cxx_flags"] = std::string(UDG_FAST_CXX_FLAGS);
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "udg_fast C++/CUDA kernels; the ops live in torch.ops.udg_fast";
  m.def("build_info", &build_info, "What the extension was compiled with.");
}
