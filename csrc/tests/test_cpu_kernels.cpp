// C++ test of the CPU kernels (no Python): udg_fast::cpu::gated_linear_forward / _backward against
// a naive triple-loop reference in double precision, on fresh random inputs.
//
// Every case: B ∈ {0, 1, 7, 33, 130, 515} × a few odd (K, N), relu / none, bias / none,
// gate_scale 1 / 2, float32 and float64; the forward output and all four gradients are checked.
// The backward is fed the kernel's own forward output (its ReLU mask is an input of the op), so
// the reference and the kernel see the same mask.
//
// Tolerance per element: |got − ref| ≤ c · eps(dtype) · mag + tiny, where mag is the sum of the
// absolute values of the terms that make up the reference value (the usual error bound of a dot
// product), c = 32. Also checked: determinism of dW/db (bit-identical on a second run), NaN
// propagation, and that bad arguments raise with the argument's name in the message.
//
// Exit status 0 when every check passes; otherwise it prints each failing tensor and exits 1.
#include "cpu/gated_linear.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace {

int g_failures = 0;
int g_checks = 0;

struct Case {
  int64_t B, K, N;
  bool relu, bias;
  double gamma;
  at::ScalarType dtype;
  std::string str() const {
    char buf[160];
    std::snprintf(buf, sizeof buf, "B=%lld K=%lld N=%lld act=%s bias=%s gamma=%g dtype=%s",
                  (long long)B, (long long)K, (long long)N, relu ? "relu" : "none",
                  bias ? "yes" : "no", gamma, dtype == at::kFloat ? "float32" : "float64");
    return buf;
  }
};

// Reference results in double, plus the magnitude (Σ|terms|) of each value for the tolerance.
struct Ref {
  std::vector<double> val, mag;
};

std::vector<double> to_vec(const at::Tensor& t) {
  at::Tensor d = t.to(at::kDouble).contiguous();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

double sigmoid_ref(double g) { return 1.0 / (1.0 + std::exp(-g)); }

// Compare one tensor; print the first few bad elements and count a failure.
void compare(const char* name, const Case& c, const at::Tensor& got_t, const Ref& ref,
             std::vector<int64_t> shape) {
  ++g_checks;
  if (got_t.sizes().vec() != shape) {
    std::printf("FAIL %-6s %s: shape %s, expected %s\n", name, c.str().c_str(),
                c10::str(got_t.sizes()).c_str(), c10::str(at::IntArrayRef(shape)).c_str());
    ++g_failures;
    return;
  }
  if (got_t.scalar_type() != c.dtype) {
    std::printf("FAIL %-6s %s: dtype %s\n", name, c.str().c_str(),
                c10::toString(got_t.scalar_type()));
    ++g_failures;
    return;
  }
  const std::vector<double> got = to_vec(got_t);
  const double eps = c.dtype == at::kFloat ? std::numeric_limits<float>::epsilon()
                                           : std::numeric_limits<double>::epsilon();
  const double tiny = c.dtype == at::kFloat ? 1e-30 : 1e-300;
  int64_t bad = 0;
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = 32.0 * eps * ref.mag[i] + tiny;
    const double err = std::fabs(got[i] - ref.val[i]);
    if (!(err <= tol)) {  // also catches NaN
      if (bad < 3) {
        std::printf("FAIL %-6s %s: [%zu] got %.9g, expected %.9g (tol %.3g)\n", name,
                    c.str().c_str(), i, got[i], ref.val[i], tol);
      }
      ++bad;
    }
    if (tol > 0) worst = std::max(worst, err / tol);
  }
  if (bad > 0) {
    std::printf("FAIL %-6s %s: %lld of %zu elements out of tolerance\n", name, c.str().c_str(),
                (long long)bad, got.size());
    ++g_failures;
  }
}

void run_case(const Case& c) {
  const auto opts = at::TensorOptions().dtype(c.dtype);
  const int64_t B = c.B, K = c.K, N = c.N;
  at::Tensor x = at::randn({B, K}, opts);
  at::Tensor g = at::randn({B, K}, opts) * 3;  // some saturated gates too
  at::Tensor w = at::randn({N, K}, opts) / std::sqrt(double(K));
  std::optional<at::Tensor> b;
  if (c.bias) b = at::randn({N}, opts);
  at::Tensor dy = at::randn({B, N}, opts);
  const char* act = c.relu ? "relu" : "none";

  at::Tensor out = udg_fast::cpu::gated_linear_forward(x, g, w, b, act, c.gamma);
  auto [dx, dg, dw, db] =
      udg_fast::cpu::gated_linear_backward(dy, x, g, w, out, act, c.gamma);

  const std::vector<double> X = to_vec(x), G = to_vec(g), W = to_vec(w), DY = to_vec(dy),
                            OUT = to_vec(out);
  const std::vector<double> BIAS = c.bias ? to_vec(*b) : std::vector<double>(N, 0.0);
  std::vector<double> S(B * K), XS(B * K);
  for (int64_t i = 0; i < B * K; ++i) {
    S[i] = sigmoid_ref(G[i]);
    XS[i] = c.gamma * S[i] * X[i];
  }

  // forward: out[i, n] = act(Σ_k xs[i, k] W[n, k] + b[n])
  Ref r_out{std::vector<double>(B * N), std::vector<double>(B * N)};
  for (int64_t i = 0; i < B; ++i) {
    for (int64_t n = 0; n < N; ++n) {
      double acc = BIAS[n], mag = std::fabs(BIAS[n]);
      for (int64_t k = 0; k < K; ++k) {
        acc += XS[i * K + k] * W[n * K + k];
        mag += std::fabs(XS[i * K + k] * W[n * K + k]);
      }
      r_out.val[i * N + n] = c.relu ? (acc > 0 ? acc : 0.0) : acc;
      r_out.mag[i * N + n] = mag;
    }
  }
  compare("out", c, out, r_out, {B, N});

  // backward, masked by the kernel's own output
  std::vector<double> DPRE(B * N);
  for (int64_t i = 0; i < B * N; ++i) DPRE[i] = (!c.relu || OUT[i] > 0) ? DY[i] : 0.0;
  Ref r_dx{std::vector<double>(B * K), std::vector<double>(B * K)};
  Ref r_dg{std::vector<double>(B * K), std::vector<double>(B * K)};
  for (int64_t i = 0; i < B; ++i) {
    for (int64_t k = 0; k < K; ++k) {
      double dxs = 0, mag = 0;
      for (int64_t n = 0; n < N; ++n) {
        dxs += DPRE[i * N + n] * W[n * K + k];
        mag += std::fabs(DPRE[i * N + n] * W[n * K + k]);
      }
      // 1 − σ(g) = σ(−g), without the cancellation of 1 − s (matters for float64)
      const double s = S[i * K + k], om = sigmoid_ref(-G[i * K + k]), xv = X[i * K + k];
      r_dx.val[i * K + k] = dxs * c.gamma * s;
      r_dx.mag[i * K + k] = mag * std::fabs(c.gamma * s);
      r_dg.val[i * K + k] = dxs * xv * c.gamma * s * om;
      r_dg.mag[i * K + k] = mag * std::fabs(xv * c.gamma * s * om);
    }
  }
  compare("dx", c, dx, r_dx, {B, K});
  compare("dg", c, dg, r_dg, {B, K});

  Ref r_dw{std::vector<double>(N * K), std::vector<double>(N * K)};
  Ref r_db{std::vector<double>(N), std::vector<double>(N)};
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      double acc = 0, mag = 0;
      for (int64_t i = 0; i < B; ++i) {
        acc += DPRE[i * N + n] * XS[i * K + k];
        mag += std::fabs(DPRE[i * N + n] * XS[i * K + k]);
      }
      r_dw.val[n * K + k] = acc;
      r_dw.mag[n * K + k] = mag;
    }
    double acc = 0, mag = 0;
    for (int64_t i = 0; i < B; ++i) {
      acc += DPRE[i * N + n];
      mag += std::fabs(DPRE[i * N + n]);
    }
    r_db.val[n] = acc;
    r_db.mag[n] = mag;
  }
  compare("dw", c, dw, r_dw, {N, K});
  compare("db", c, db, r_db, {N});

  // determinism: the same inputs give bit-identical gradients
  auto [dx2, dg2, dw2, db2] =
      udg_fast::cpu::gated_linear_backward(dy, x, g, w, out, act, c.gamma);
  const char* names[] = {"dx", "dg", "dw", "db"};
  const at::Tensor* a[] = {&dx, &dg, &dw, &db};
  const at::Tensor* a2[] = {&dx2, &dg2, &dw2, &db2};
  for (int j = 0; j < 4; ++j) {
    ++g_checks;
    if (!at::equal(*a[j], *a2[j])) {
      std::printf("FAIL %-6s %s: not bit-identical on a second run\n", names[j], c.str().c_str());
      ++g_failures;
    }
  }
}

// A NaN in x or gate_logits: that row's output is NaN (also through ReLU), and the gradients
// carry it as in the eager formula.
void check_nan(at::ScalarType dtype, bool relu, bool in_gate) {
  const auto opts = at::TensorOptions().dtype(dtype);
  const int64_t B = 37, K = 19, N = 11;
  at::Tensor x = at::randn({B, K}, opts), g = at::randn({B, K}, opts);
  at::Tensor w = at::randn({N, K}, opts), b = at::randn({N}, opts), dy = at::randn({B, N}, opts);
  (in_gate ? g : x).index_put_({5, 3}, std::numeric_limits<double>::quiet_NaN());
  const char* act = relu ? "relu" : "none";
  at::Tensor out = udg_fast::cpu::gated_linear_forward(x, g, w, b, act, 2.0);
  auto [dx, dg, dw, db] = udg_fast::cpu::gated_linear_backward(dy, x, g, w, out, act, 2.0);
  const std::string what = std::string(dtype == at::kFloat ? "float32" : "float64") + " act=" +
                           act + (in_gate ? " NaN in gate_logits" : " NaN in x");
  auto expect = [&](const char* name, bool ok) {
    ++g_checks;
    if (!ok) {
      std::printf("FAIL NaN  %s: %s\n", what.c_str(), name);
      ++g_failures;
    }
  };
  expect("out row 5 all NaN", out[5].isnan().all().item<bool>());
  expect("other rows of out have no NaN",
         !out.index({at::indexing::Slice(0, 5)}).isnan().any().item<bool>() &&
             !out.index({at::indexing::Slice(6, B)}).isnan().any().item<bool>());
  expect("dg[5, 3] NaN", dg[5][3].isnan().item<bool>());
  // dpre · W: NaN reaches dW through xs (a NaN row of xs meets every column of dpreᵀ)
  expect("dw has NaN", dw.isnan().any().item<bool>());
  if (in_gate) expect("dx[5, 3] NaN (dx = dxs·γσ(g))", dx[5][3].isnan().item<bool>());
  if (!relu) expect("db finite (NaN never enters dy)", !db.isnan().any().item<bool>());
}

template <typename F>
void expect_throws(const char* what, const char* needle, F&& f) {
  ++g_checks;
  try {
    f();
  } catch (const c10::Error& e) {
    if (std::string(e.what()).find(needle) == std::string::npos) {
      std::printf("FAIL args %s: message lacks '%s': %s\n", what, needle, e.what());
      ++g_failures;
    }
    return;
  }
  std::printf("FAIL args %s: did not throw\n", what);
  ++g_failures;
}

void check_args() {
  using udg_fast::cpu::gated_linear_backward;
  using udg_fast::cpu::gated_linear_forward;
  const auto f = at::TensorOptions().dtype(at::kFloat);
  at::Tensor x = at::randn({4, 3}, f), g = at::randn({4, 3}, f), w = at::randn({2, 3}, f);
  at::Tensor out = at::randn({4, 2}, f), dy = at::randn({4, 2}, f);
  expect_throws("gate_logits dtype", "gate_logits",
                [&] { gated_linear_forward(x, g.to(at::kDouble), w, {}, "relu", 1.0); });
  expect_throws("weight shape", "weight",
                [&] { gated_linear_forward(x, g, at::randn({2, 4}, f), {}, "relu", 1.0); });
  expect_throws("gate_logits shape", "gate_logits",
                [&] { gated_linear_forward(x, at::randn({4, 2}, f), w, {}, "relu", 1.0); });
  expect_throws("bias shape", "bias",
                [&] { gated_linear_forward(x, g, w, at::randn({3}, f), "relu", 1.0); });
  expect_throws("x dtype", "float32 or float64", [&] {
    gated_linear_forward(x.to(at::kHalf), g.to(at::kHalf), w.to(at::kHalf), {}, "relu", 1.0);
  });
  expect_throws("activation", "activation",
                [&] { gated_linear_forward(x, g, w, {}, "gelu", 1.0); });
  expect_throws("grad_out shape", "grad_out",
                [&] { gated_linear_backward(dy.t(), x, g, w, out, "relu", 1.0); });
  expect_throws("out shape", "out",
                [&] { gated_linear_backward(dy, x, g, w, out.narrow(0, 0, 3), "relu", 1.0); });
  expect_throws("x 1-D", "x", [&] { gated_linear_forward(x[0], g[0], w, {}, "relu", 1.0); });
}

}  // namespace

int main() {
  at::manual_seed(20240607);
  const std::vector<int64_t> batches = {0, 1, 7, 33, 130, 515};
  const std::vector<std::pair<int64_t, int64_t>> kn = {{1, 1}, {13, 7}, {64, 33}, {400, 200}};
  int cases = 0;
  for (at::ScalarType dtype : {at::kFloat, at::kDouble}) {
    for (int64_t B : batches) {
      for (auto [K, N] : kn) {
        if (B * K * N > 20'000'000) continue;  // keep the naive reference quick (515×400×200)
        for (bool relu : {true, false}) {
          for (bool bias : {true, false}) {
            for (double gamma : {1.0, 2.0}) {
              run_case(Case{B, K, N, relu, bias, gamma, dtype});
              ++cases;
            }
          }
        }
      }
    }
  }
  for (at::ScalarType dtype : {at::kFloat, at::kDouble}) {
    for (bool relu : {true, false}) {
      for (bool in_gate : {false, true}) check_nan(dtype, relu, in_gate);
    }
  }
  check_args();
  std::printf("%s: %d cases, %d checks, %d failures (threads: %d)\n",
              g_failures == 0 ? "PASS" : "FAIL", cases, g_checks, g_failures,
              at::get_num_threads());
  return g_failures == 0 ? 0 : 1;
}
