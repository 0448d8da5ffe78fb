// CPU kernels of udg_fast::augru: DIEN's AUGRU (the paper's formula), a plain GRU when att is None.
// The equations are in augru.h and udg_fast/ops/augru.py.
//
// Design. The recurrence is independent per row, so rows are sorted by length (descending,
// stable) and cut into blocks of RB = 2 vectors of rows (32 rows in float32 with AVX-512); each
// block runs its whole time loop on one thread, with no synchronisation per step, and only over
// the rows still running (a prefix of the block, as packed sequences do). Blocks are handed out
// longest first from an atomic counter.
//
// Inside a block everything is kept "transposed": a vector holds one feature for RB rows, so the
// gate math is dense for any H (no padding of H to the vector width) and the step's GEMMs are
// broadcast-FMA micro-kernels that read both weight matrices from L1/L2 (31 KB at H = I = 36,
// float32) instead of materialising the input projection of all steps:
//   forward   [r z | n_i | n_h] pre-activations = W · [x_t ; h_{t-1}]  (r, z share one K loop)
//   backward  recompute the gates from x_t and h_{t-1} = outputs[:, t-1] (h0 at t = 0), then
//             dh_{t-1} = dh ⊙ (1 − a z) + W_hhᵀ dg_h,   dx_t = W_ihᵀ dg_i,
//             dW += dg · [x_t ; h_{t-1}]ᵀ into per-block partials, summed in block order at the
//             end (bitwise deterministic, independent of the number of threads).
// Vector code uses GCC vector extensions, compiled per instruction set with the matching vector
// width (AVX-512: 64 bytes, AVX2+FMA: 32, baseline: 16) and picked at run time from the CPU's
// features, so the extension needs no -march flag; UDG_FAST_CPU_ISA=avx2|baseline caps the choice.
// exp is a Cephes polynomial (NaN-propagating). No ATen call inside the time loop.
// Single-thread CPU time on the 2-core AMD EPYC (Zen 4) development machine, B=1024, T=50,
// H=I=36, lengths uniform in [1, T], float32: forward ≈ 7 ms, backward ≈ 19 ms (AVX-512; AVX2
// ≈ 10% slower, baseline ≈ 2.6×); see benchmarks/bench_augru.py for the comparison with others.
#include "cpu/augru.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte vector types only live inside inlined code
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#define UDG_AUGRU_X86 1
#else
#define UDG_AUGRU_X86 0
#endif
#define UDG_AI __attribute__((always_inline)) inline

namespace udg_fast::cpu {
namespace augru_detail {

// ---- vectors ------------------------------------------------------------------------------------

// W-byte vectors of S (GCC vector extensions): W = 64 for AVX-512, 32 for AVX2, 16 for the
// baseline (SSE2, NEON). Every kernel below is a template on these traits and is compiled once per
// instruction set (see Blocks at the end): a 64-byte vector on AVX2 spills and was 7× slower.
template <typename S_, int W>
struct VecT {
  using S = S_;
  using E = std::conditional_t<sizeof(S_) == 4, int32_t, int64_t>;
  typedef S_ V __attribute__((vector_size(W)));
  typedef E I __attribute__((vector_size(W)));
  static constexpr int L = W / static_cast<int>(sizeof(S_));
};

template <class VT>
UDG_AI typename VT::V vld(const typename VT::S* p) {
  typename VT::V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <class VT>
UDG_AI void vst(typename VT::S* p, typename VT::V v) {
  std::memcpy(p, &v, sizeof(v));
}
// Broadcast, done on the integer bit pattern: GCC 12 keeps a scalar add before the broadcast for
// `V{} + s` (-0 + 0 is +0) and expands `s - V{}` lane by lane into 16 masked broadcasts, which
// made the micro-kernels several times slower. The integer form is one vpbroadcastd.
template <class VT>
UDG_AI typename VT::V vset(typename VT::S s) {
  typename VT::E i;
  std::memcpy(&i, &s, sizeof(s));
  return (typename VT::V)(typename VT::I{} + i);
}
// m ? a : b, m from a vector comparison (all ones / all zeros per lane).
template <class VT>
UDG_AI typename VT::V vsel(typename VT::I m, typename VT::V a, typename VT::V b) {
  using I = typename VT::I;
  return (typename VT::V)(((I)a & m) | ((I)b & ~m));
}
// Lanes [0, n) of a vector: all ones there, zeros elsewhere.
template <class VT>
UDG_AI typename VT::I vfirst(int64_t n) {
  typename VT::I iota;
  for (int i = 0; i < VT::L; ++i) iota[i] = i;
  return iota < (typename VT::I{} + static_cast<typename VT::E>(std::min<int64_t>(n, VT::L)));
}

// exp, Cephes polynomials; rounding by adding 1.5·2^23 (2^52 for double), whose low mantissa
// bits then hold the integer: 26 instructions instead of 34 with int conversions (measured 1.3 ulp
// max on [-100, 100] in float). The clamps are min/max with x second (x86's min/max return the
// second operand on NaN), so NaN in gives NaN out; ±inf clamp to the finite ends.
template <class VT>
UDG_AI typename VT::V vexp(typename VT::V x) {
  using V = typename VT::V;
  using I = typename VT::I;
  if constexpr (sizeof(typename VT::S) == 4) {
    const V hi = vset<VT>(88.3762626647949f), lo = vset<VT>(-87.3365447505531f);
    x = hi < x ? hi : x;
    x = lo > x ? lo : x;
    const V magic = vset<VT>(12582912.0f);
    const V t = x * 1.44269504088896341f + magic;
    const V n = t - magic;
    const I ni = (I)t - (I)magic;
    x = x - n * 0.693359375f;
    x = x - n * -2.12194440e-4f;
    const V z = x * x;
    V y = ((((1.9875691500E-4f * x + 1.3981999507E-3f) * x + 8.3334519073E-3f) * x +
            4.1665795894E-2f) * x + 1.6666665459E-1f) * x + 5.0000001201E-1f;
    y = y * z + x + 1.0f;
    return y * (V)((ni + 127) << 23);
  } else {
    const V hi = vset<VT>(709.0), lo = vset<VT>(-708.39641853226408);
    x = hi < x ? hi : x;
    x = lo > x ? lo : x;
    const V magic = vset<VT>(6755399441055744.0);
    const V t = x * 1.4426950408889634073599 + magic;
    const V n = t - magic;
    const I ni = (I)t - (I)magic;
    x = x - n * 6.93145751953125E-1;
    x = x - n * 1.42860682030941723212E-6;
    const V xx = x * x;
    const V px = x * ((1.26177193074810590878E-4 * xx + 3.02994407707441961300E-2) * xx +
                      9.99999999999999999910E-1);
    const V qx = ((3.00198505138664455042E-6 * xx + 2.52448340349684104192E-3) * xx +
                  2.27265548208155028766E-1) * xx + 2.00000000000000000009E0;
    x = px / (qx - px);
    x = 1.0 + 2.0 * x;
    return x * (V)((ni + 1023) << 52);
  }
}

template <class VT>
UDG_AI typename VT::V vsigmoid(typename VT::V x) {
  using S = typename VT::S;
  return S(1) / (S(1) + vexp<VT>(-x));
}
template <class VT>
UDG_AI typename VT::V vtanh(typename VT::V x) {
  using S = typename VT::S;
  return S(2) / (S(1) + vexp<VT>(S(-2) * x)) - S(1);
}

// ---- micro-kernels ------------------------------------------------------------------------------

// Row tile of the transposed GEMMs; H (and I for dx) are padded to a multiple of it with zero rows,
// so no kernel has a tail. 6 rows × 2 vectors = 12 accumulators (fits AVX2's 16 registers too).
constexpr int kMR = 6;
// Vectors of rows per block: each broadcast weight then feeds kNB FMAs. (3 and 4 measured no
// faster on Zen 4.)
constexpr int kNB = 2;
template <class VT>
constexpr int rows_per_block() { return kNB * VT::L; }

template <typename S>
struct Seg {
  const S* a;   // A[m, k] = a[m * lda + k]
  int64_t lda;
  const S* b;   // B[k, lane] = b[k * RB + lane]
  int64_t k;
};

// C[m, lanes] = init + Σ_seg Σ_k A[m, k] · B[k, lanes] for m < M (a multiple of kMR) and the first
// NBA vectors of lanes. init: cin[m, lanes] if cin, else bias[m] if bias, else 0. c may equal cin.
template <class VT, int NBA>
UDG_AI void tgemm(int64_t M, const Seg<typename VT::S>* seg, int nseg, const typename VT::S* bias,
                  const typename VT::S* cin, typename VT::S* c) {
  using S = typename VT::S;
  using V = typename VT::V;
  constexpr int L = VT::L;
  constexpr int RB = rows_per_block<VT>();
  for (int64_t m0 = 0; m0 < M; m0 += kMR) {
    V acc[kMR][NBA];
    for (int i = 0; i < kMR; ++i)
      for (int v = 0; v < NBA; ++v)
        acc[i][v] = cin ? vld<VT>(cin + (m0 + i) * RB + v * L) : (bias ? vset<VT>(bias[m0 + i]) : V{});
    for (int s = 0; s < nseg; ++s) {
      const S* a = seg[s].a + m0 * seg[s].lda;
      const int64_t lda = seg[s].lda;
      const S* b = seg[s].b;
      for (int64_t k = 0; k < seg[s].k; ++k) {
        V bv[NBA];
        for (int v = 0; v < NBA; ++v) bv[v] = vld<VT>(b + k * RB + v * L);
        for (int i = 0; i < kMR; ++i) {
          const V ai = vset<VT>(a[i * lda + k]);
          for (int v = 0; v < NBA; ++v) acc[i][v] += ai * bv[v];
        }
      }
    }
    for (int i = 0; i < kMR; ++i)
      for (int v = 0; v < NBA; ++v) vst<VT>(c + (m0 + i) * RB + v * L, acc[i][v]);
  }
}

// Weight-gradient accumulation: C[m, :ncol] += Σ_{l < nk} A[m, l] · Brow[l, :ncol], with A the
// transposed gate gradients (a[m * RB + l]) and Brow row-major (brow[l * ldb + col]); ncol = ldb,
// a multiple of L. Column blocks of up to 4 vectors: ≤ 24 accumulators.
template <class VT, int NV>
UDG_AI void rgemm_cols(int64_t M, const typename VT::S* a, const typename VT::S* brow, int64_t ldb,
                       int64_t nk, typename VT::S* c, int64_t col0) {
  using V = typename VT::V;
  constexpr int L = VT::L;
  constexpr int RB = rows_per_block<VT>();
  for (int64_t m0 = 0; m0 < M; m0 += kMR) {
    V acc[kMR][NV];
    for (int i = 0; i < kMR; ++i)
      for (int v = 0; v < NV; ++v) acc[i][v] = vld<VT>(c + (m0 + i) * ldb + col0 + v * L);
    for (int64_t l = 0; l < nk; ++l) {
      V bv[NV];
      for (int v = 0; v < NV; ++v) bv[v] = vld<VT>(brow + l * ldb + col0 + v * L);
      for (int i = 0; i < kMR; ++i) {
        const V ai = vset<VT>(a[(m0 + i) * RB + l]);
        for (int v = 0; v < NV; ++v) acc[i][v] += ai * bv[v];
      }
    }
    for (int i = 0; i < kMR; ++i)
      for (int v = 0; v < NV; ++v) vst<VT>(c + (m0 + i) * ldb + col0 + v * L, acc[i][v]);
  }
}

template <class VT>
UDG_AI void rgemm(int64_t M, const typename VT::S* a, const typename VT::S* brow, int64_t ldb,
                  int64_t nk, typename VT::S* c) {
  constexpr int L = VT::L;
  // 6 × 4 = 24 accumulators fit AVX-512's 32 registers; AVX2 and SSE/NEON have 16: 6 × 2.
  constexpr int NVMAX = L * sizeof(typename VT::S) == 64 ? 4 : 2;
  for (int64_t col = 0; col < ldb; col += NVMAX * L) {
    switch (std::min<int64_t>(NVMAX, (ldb - col) / L)) {
      case 1: rgemm_cols<VT, 1>(M, a, brow, ldb, nk, c, col); break;
      case 2: rgemm_cols<VT, 2>(M, a, brow, ldb, nk, c, col); break;
      case 3: if constexpr (NVMAX >= 3) rgemm_cols<VT, 3>(M, a, brow, ldb, nk, c, col); break;
      default: rgemm_cols<VT, NVMAX>(M, a, brow, ldb, nk, c, col); break;
    }
  }
}

// ---- problem description ------------------------------------------------------------------------

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

template <typename S>
struct Problem {
  int64_t B = 0, T = 0, I = 0, H = 0;
  int64_t Hm = 0, Im = 0, Ipad = 0, Hpad = 0, K = 0;  // padded sizes; K = I + H
  int64_t Hr = 0, Ir = 0;  // rows of transposed h / x buffers: max(Hm, Hpad), max(Im, Ipad)
  bool has_att = false;
  const S* x = nullptr;      // [B, T, I]
  const S* att = nullptr;    // [B, T] or null
  const S* h0 = nullptr;     // [B, H]
  const int64_t* order = nullptr;  // rows sorted by length, descending (stable)
  const int64_t* slen = nullptr;   // their lengths
  const S* wg = nullptr;     // [3 Hm, K]: row g·Hm + j = [W_ih[gH + j, :], W_hh[gH + j, :]]
  const S* brz = nullptr;    // [2 Hm] b_ih + b_hh of r, z
  const S* bin = nullptr;    // [Hm] b_in
  const S* bhn = nullptr;    // [Hm] b_hn
  const S* wihT = nullptr;   // [Im, 3 Hm]: (i, g·Hm + j) = W_ih[gH + j, i]
  const S* whhT = nullptr;   // [Hm, 3 Hm]: (k, g·Hm + j) = W_hh[gH + j, k]
  S* out = nullptr;          // [B, T, H] forward output; backward reads it as the h sequence
  S* hn = nullptr;           // [B, H]
  const S* gout = nullptr;   // [B, T, H]
  const S* ghn = nullptr;    // [B, H]
  S* dx = nullptr;           // [B, T, I]
  S* datt = nullptr;         // [B, T] or null
  S* dh0 = nullptr;          // [B, H]
  S* partial = nullptr;      // [nblocks, part_size]: dW_ih [3Hm, Ipad], dW_hh [3Hm, Hpad], db [4Hm]
  int64_t part_size = 0;
};

template <class VT>
int64_t fwd_scratch_size(const Problem<typename VT::S>& p) {
  constexpr int RB = rows_per_block<VT>();
  return (p.I + p.Hr) * RB + 4 * p.Hm * RB + RB + RB * p.Ipad + RB * p.Hpad;
}
template <class VT>
int64_t bwd_scratch_size(const Problem<typename VT::S>& p) {
  constexpr int RB = rows_per_block<VT>();
  constexpr int L = VT::L;
  return (p.I + p.Hr) * RB + 8 * p.Hm * RB + p.Hr * RB + p.Ir * RB + RB * p.Ipad + 2 * RB * p.Hpad +
         2 * RB + 4 * p.Hm * L;
}

// Gathers rows of a [rows, ld] row-major source (row r at src + rows[l] * stride) into the
// transposed buffer dst[k * RB + l], k < n, l < nact.
template <typename S, int RB>
UDG_AI void gather_t(S* dst, const S* src, const int64_t* rows, int64_t stride, int64_t n,
                     int64_t nact) {
  for (int64_t l = 0; l < nact; ++l) {
    const S* s = src + rows[l] * stride;
    for (int64_t k = 0; k < n; ++k) dst[k * RB + l] = s[k];
  }
}
template <typename S, int RB>
UDG_AI void scatter_t(S* dst, const S* src, const int64_t* rows, int64_t stride, int64_t n,
                      int64_t nact) {
  for (int64_t l = 0; l < nact; ++l) {
    S* d = dst + rows[l] * stride;
    for (int64_t k = 0; k < n; ++k) d[k] = src[k * RB + l];
  }
}

// Copies n elements: vector body, scalar tail (a memcpy call per row cost ~1 ms of 21 in backward).
template <class VT>
UDG_AI void copy_row(typename VT::S* dst, const typename VT::S* src, int64_t n) {
  constexpr int L = VT::L;
  int64_t k = 0;
  for (; k + L <= n; k += L) vst<VT>(dst + k, vld<VT>(src + k));
  for (; k < n; ++k) dst[k] = src[k];
}

// In-register transpose of an L×L tile (r[i][j] → r[j][i]) by block swaps of size D = L/2 .. 1;
// each stage is L two-source permutes (vpermt2ps), L·log2(L) in all.
template <class VT, int D>
UDG_AI void transpose_stage(typename VT::V* r) {
  using I = typename VT::I;
  constexpr int L = VT::L;
  I lo, hi;
  for (int j = 0; j < L; ++j) {
    lo[j] = (j & D) ? L + j - D : j;
    hi[j] = (j & D) ? L + j : j + D;
  }
  for (int i = 0; i < L; ++i) {
    if (i & D) continue;
    const typename VT::V a = r[i], b = r[i + D];
    r[i] = __builtin_shuffle(a, b, lo);
    r[i + D] = __builtin_shuffle(a, b, hi);
  }
  if constexpr (D > 1) transpose_stage<VT, D / 2>(r);
}
template <class VT>
UDG_AI void transpose_tile(typename VT::V* r) {
  transpose_stage<VT, VT::L / 2>(r);
}

// Row-major → transposed: dst[k · RB + l] (+)= src[l · lds + k] for k < n and the lanes of the
// first ng vectors. src must be readable up to column round_up(n, L) (zero padding).
template <class VT, bool ADD>
UDG_AI void rows_to_t(typename VT::S* dst, const typename VT::S* src, int64_t lds, int64_t n,
                      int64_t ng) {
  using V = typename VT::V;
  constexpr int L = VT::L;
  constexpr int RB = rows_per_block<VT>();
  for (int64_t g = 0; g < ng; ++g)
    for (int64_t c0 = 0; c0 < n; c0 += L) {
      V r[L];
      for (int i = 0; i < L; ++i) r[i] = vld<VT>(src + (g * L + i) * lds + c0);
      transpose_tile<VT>(r);
      const int64_t kn = std::min<int64_t>(L, n - c0);
      for (int64_t k = 0; k < kn; ++k) {
        typename VT::S* d = dst + (c0 + k) * RB + g * L;
        vst<VT>(d, ADD ? vld<VT>(d) + r[k] : r[k]);
      }
    }
}

// Transposed → row-major: dst[l · ldd + k] = src[k · RB + l] for k < round_up(n, L) (src must have
// those rows) and the lanes of the first ng vectors.
template <class VT>
UDG_AI void t_to_rows(typename VT::S* dst, int64_t ldd, const typename VT::S* src, int64_t n,
                      int64_t ng) {
  using V = typename VT::V;
  constexpr int L = VT::L;
  constexpr int RB = rows_per_block<VT>();
  for (int64_t g = 0; g < ng; ++g)
    for (int64_t c0 = 0; c0 < n; c0 += L) {
      V r[L];
      for (int k = 0; k < L; ++k) r[k] = vld<VT>(src + (c0 + k) * RB + g * L);
      transpose_tile<VT>(r);
      for (int i = 0; i < L; ++i) vst<VT>(dst + (g * L + i) * ldd + c0, r[i]);
    }
}

// The rows of a block are scattered over the batch, and the hardware prefetcher cannot follow
// 32 row streams: without these, the gathers of x and the scatters of the outputs miss the cache
// and took about a third of the forward time. One step ahead is plenty: a step of a block is
// ~10^4 cycles.
template <typename S>
UDG_AI void prefetch_rows(const S* base, const int64_t* rows, int64_t stride, int64_t n,
                          int64_t nact, bool write) {
  const int64_t bytes = n * static_cast<int64_t>(sizeof(S));
  if (bytes <= 0) return;
  for (int64_t l = 0; l < nact; ++l) {
    const char* c = reinterpret_cast<const char*>(base + rows[l] * stride);
    for (int64_t o = 0; o < bytes; o += 64) {
      if (write) __builtin_prefetch(c + o, 1); else __builtin_prefetch(c + o, 0);
    }
    if (write) __builtin_prefetch(c + bytes - 1, 1); else __builtin_prefetch(c + bytes - 1, 0);
  }
}

// Calls f(std::integral_constant<int, n>) for the runtime n in [1, N]: the steps are compiled for
// each number of running vectors of rows.
template <int N, typename F>
UDG_AI void dispatch_nba(int64_t n, F&& f) {
  if constexpr (N > 1) {
    if (n < N) return dispatch_nba<N - 1>(n, f);
  }
  f(std::integral_constant<int, N>{});
}

// ---- the gates' pre-activations, shared by both directions ---------------------------------------

// G = [r | z | n_i | n_h], each [Hm, RB], from the block's xh = [x_t (I rows) | h_{t-1} (H rows)]:
// W_r, W_z act on the whole [x; h] (biases b_i + b_h pre-summed in brz); n keeps its input and
// hidden parts apart (n = tanh(n_i + r ⊙ n_h)).
template <class VT, int NBA>
UDG_AI void preactivations(const Problem<typename VT::S>& p, const typename VT::S* xh, typename VT::S* G) {
  using S = typename VT::S;
  constexpr int RB = rows_per_block<VT>();
  const int64_t Hm = p.Hm, K = p.K, I_ = p.I;
  {
    Seg<S> s{p.wg, K, xh, K};
    tgemm<VT, NBA>(2 * Hm, &s, 1, p.brz, nullptr, G);
  }
  {
    Seg<S> s{p.wg + 2 * Hm * K, K, xh, I_};
    tgemm<VT, NBA>(Hm, &s, 1, p.bin, nullptr, G + 2 * Hm * RB);
  }
  {
    Seg<S> s{p.wg + 2 * Hm * K + I_, K, xh + I_ * RB, p.H};
    tgemm<VT, NBA>(Hm, &s, 1, p.bhn, nullptr, G + 3 * Hm * RB);
  }
}

// ---- forward, one block -------------------------------------------------------------------------

template <class VT, int NBA>
UDG_AI void fwd_step(const Problem<typename VT::S>& p, typename VT::S* xh, typename VT::S* G,
                     const typename VT::S* av, int64_t nact) {
  using S = typename VT::S;
  using V = typename VT::V;
  using I = typename VT::I;
  constexpr int L = VT::L;
  constexpr int RB = rows_per_block<VT>();
  const int64_t Hm = p.Hm, I_ = p.I;
  S* h = xh + I_ * RB;
  preactivations<VT, NBA>(p, xh, G);
  for (int v = 0; v < NBA; ++v) {
    const I active = vfirst<VT>(nact - v * L);
    const V a = p.has_att ? vld<VT>(av + v * L) : vset<VT>(S(1));
    for (int64_t j = 0; j < p.H; ++j) {
      const int64_t o = j * RB + v * L;
      const V r = vsigmoid<VT>(vld<VT>(G + o));
      V z = vsigmoid<VT>(vld<VT>(G + Hm * RB + o));
      const V n = vtanh<VT>(vld<VT>(G + 2 * Hm * RB + o) + r * vld<VT>(G + 3 * Hm * RB + o));
      if (p.has_att) z = a * z;
      const V hp = vld<VT>(h + o);
      const V hnew = (S(1) - z) * hp + z * n;  // the paper's form, not nn.GRU's
      vst<VT>(h + o, vsel<VT>(active, hnew, hp));
    }
  }
}

template <class VT>
UDG_AI void fwd_block(const Problem<typename VT::S>& p, int64_t blk, typename VT::S* scratch) {
  using S = typename VT::S;
  constexpr int RB = rows_per_block<VT>();
  constexpr int L = VT::L;
  const int64_t r0 = blk * RB;
  const int64_t nrows = std::min<int64_t>(RB, p.B - r0);
  const int64_t* rows = p.order + r0;
  const int64_t* lens = p.slen + r0;
  const int64_t I_ = p.I, H = p.H, T = p.T;
  S* xh = scratch;                       // [(I + Hr), RB]: x_t rows, then the h state rows
  S* G = xh + (I_ + p.Hr) * RB;          // [4 Hm, RB] pre-activations
  S* av = G + 4 * p.Hm * RB;             // [RB] attention scores of step t
  S* xrow = av + RB;                     // [RB, Ipad] x_t, row-major (staging)
  S* hrow = xrow + RB * p.Ipad;          // [RB, Hpad] h_t, row-major (staging)
  S* h = xh + I_ * RB;
  // Lanes past nrows (last block) keep zeros; padding columns and rows must be zero.
  std::fill(scratch, scratch + fwd_scratch_size<VT>(p), S(0));
  gather_t<S, RB>(h, p.h0, rows, H, H, nrows);
  int64_t nact = nrows;
  const int64_t maxlen = nrows > 0 ? lens[0] : 0;
  for (int64_t t = 0; t < maxlen; ++t) {
    while (nact > 0 && lens[nact - 1] <= t) --nact;
    const int64_t ng = (nact + L - 1) / L;
    for (int64_t l = 0; l < nact; ++l) copy_row<VT>(xrow + l * p.Ipad, p.x + (rows[l] * T + t) * I_, I_);
    rows_to_t<VT, false>(xh, xrow, p.Ipad, I_, ng);
    if (t + 1 < maxlen) {
      prefetch_rows(p.x + (t + 1) * I_, rows, T * I_, I_, nact, false);
      prefetch_rows(p.out + (t + 1) * H, rows, T * H, H, nact, true);
    }
    if (p.has_att)
      for (int64_t l = 0; l < nact; ++l) av[l] = p.att[rows[l] * T + t];
    dispatch_nba<kNB>(ng, [&](auto nba) __attribute__((always_inline)) {
      fwd_step<VT, nba.value>(p, xh, G, av, nact);
    });
    t_to_rows<VT>(hrow, p.Hpad, h, H, ng);
    for (int64_t l = 0; l < nact; ++l) copy_row<VT>(p.out + (rows[l] * T + t) * H, hrow + l * p.Hpad, H);
  }
  scatter_t<S, RB>(p.hn, h, rows, H, H, nrows);
  for (int64_t l = 0; l < nrows; ++l)
    std::fill(p.out + (rows[l] * T + lens[l]) * H, p.out + (rows[l] + 1) * T * H, S(0));
}

// ---- backward, one block ------------------------------------------------------------------------

template <class VT, int NBA, typename S = typename VT::S>
UDG_AI void bwd_step(const Problem<S>& p, S* xh, S* G, S* dG, S* dh, S* dxT, const S* xrow,
                     const S* hrow, const S* av, S* dav, S* dbv, S* part, int64_t nact) {
  using V = typename VT::V;
  using I = typename VT::I;
  constexpr int L = VT::L;
  constexpr int RB = rows_per_block<VT>();
  const int64_t Hm = p.Hm, I_ = p.I;
  const S* hprev = xh + I_ * RB;
  preactivations<VT, NBA>(p, xh, G);  // recomputed from x_t and h_{t-1}
  // Gate gradients dG = [dr_pre | dz_pre | dn_pre | dn_pre ⊙ r] and dh ← dh ⊙ (1 − a z).
  for (int v = 0; v < NBA; ++v) {
    const I active = vfirst<VT>(nact - v * L);
    const V a = p.has_att ? vld<VT>(av + v * L) : vset<VT>(S(1));
    V da = V{};
    for (int64_t j = 0; j < p.H; ++j) {
      const int64_t o = j * RB + v * L;
      const V pr = vld<VT>(G + o), pz = vld<VT>(G + Hm * RB + o);
      const V pin = vld<VT>(G + 2 * Hm * RB + o), phn = vld<VT>(G + 3 * Hm * RB + o);
      const V r = vsigmoid<VT>(pr);
      const V z = vsigmoid<VT>(pz);
      const V n = vtanh<VT>(pin + r * phn);
      const V zp = p.has_att ? a * z : z;
      const V hp = vld<VT>(hprev + o);
      const V g = vld<VT>(dh + o);
      const V dzp = g * (n - hp);
      const V dn = g * zp;
      const V dhdir = g - dn;
      da += dzp * z;
      const V dz = p.has_att ? dzp * a : dzp;
      const V zero = V{};
      const V dpz = vsel<VT>(active, dz * z * (S(1) - z), zero);
      const V dpin = vsel<VT>(active, dn * (S(1) - n * n), zero);
      const V dphn = dpin * r;
      const V dpr = dpin * phn * r * (S(1) - r);
      vst<VT>(dG + o, dpr);
      vst<VT>(dG + Hm * RB + o, dpz);
      vst<VT>(dG + 2 * Hm * RB + o, dpin);
      vst<VT>(dG + 3 * Hm * RB + o, dphn);
      vst<VT>(dh + o, vsel<VT>(active, dhdir, g));
      S* db = dbv + j * L;
      vst<VT>(db, vld<VT>(db) + dpr);
      vst<VT>(db + Hm * L, vld<VT>(db + Hm * L) + dpz);
      vst<VT>(db + 2 * Hm * L, vld<VT>(db + 2 * Hm * L) + dpin);
      vst<VT>(db + 3 * Hm * L, vld<VT>(db + 3 * Hm * L) + dphn);
    }
    vst<VT>(dav + v * L, da);
  }
  // dh_{t-1} = dh ⊙ (1 − a z) + W_hhᵀ [dr; dz; dn ⊙ r]   (in place on dh)
  {
    Seg<S> s[2] = {{p.whhT, 3 * Hm, dG, 2 * Hm}, {p.whhT + 2 * Hm, 3 * Hm, dG + 3 * Hm * RB, Hm}};
    tgemm<VT, NBA>(Hm, s, 2, nullptr, dh, dh);
  }
  // dx_t = W_ihᵀ [dr; dz; dn]
  if (p.Im > 0) {
    Seg<S> s{p.wihT, 3 * Hm, dG, 3 * Hm};
    tgemm<VT, NBA>(p.Im, &s, 1, nullptr, nullptr, dxT);
  }
  // dW_ih += [dr; dz; dn] x_tᵀ,  dW_hh += [dr; dz; dn ⊙ r] h_{t-1}ᵀ  (over the running rows)
  S* dwih = part;
  S* dwhh = part + 3 * Hm * p.Ipad;
  if (p.Ipad > 0) rgemm<VT>(3 * Hm, dG, xrow, p.Ipad, nact, dwih);
  rgemm<VT>(2 * Hm, dG, hrow, p.Hpad, nact, dwhh);
  rgemm<VT>(Hm, dG + 3 * Hm * RB, hrow, p.Hpad, nact, dwhh + 2 * Hm * p.Hpad);
}

template <class VT>
UDG_AI void bwd_block(const Problem<typename VT::S>& p, int64_t blk, typename VT::S* scratch) {
  using S = typename VT::S;
  constexpr int RB = rows_per_block<VT>();
  constexpr int L = VT::L;
  const int64_t r0 = blk * RB;
  const int64_t nrows = std::min<int64_t>(RB, p.B - r0);
  const int64_t* rows = p.order + r0;
  const int64_t* lens = p.slen + r0;
  const int64_t I_ = p.I, H = p.H, T = p.T, Hm = p.Hm;
  S* xh = scratch;                    // [(I + Hr), RB]: x_t, then h_{t-1}
  S* G = xh + (I_ + p.Hr) * RB;       // [4 Hm, RB] pre-activations
  S* dG = G + 4 * Hm * RB;            // [4 Hm, RB] their gradients
  S* dh = dG + 4 * Hm * RB;           // [Hr, RB] gradient of the h state
  S* dxT = dh + p.Hr * RB;            // [Ir, RB]
  S* xrow = dxT + p.Ir * RB;          // [RB, Ipad] x_t, row-major; then the dx_t staging
  S* hrow = xrow + RB * p.Ipad;       // [RB, Hpad] h_{t-1}, row-major
  S* grow = hrow + RB * p.Hpad;       // [RB, Hpad] grad_outputs[:, t], row-major
  S* av = grow + RB * p.Hpad;         // [RB]
  S* dav = av + RB;                   // [RB]
  S* dbv = dav + RB;                  // [4 Hm, L] bias-gradient lanes
  S* part = p.partial + blk * p.part_size;
  // Zero: padding rows/columns, and the staging rows of lanes not yet running (grow's must stay
  // zero: they are added into dh for whole vectors of lanes).
  std::fill(scratch, scratch + bwd_scratch_size<VT>(p), S(0));
  std::fill(part, part + p.part_size, S(0));
  gather_t<S, RB>(dh, p.ghn, rows, H, H, nrows);
  for (int64_t l = 0; l < nrows; ++l) {
    const int64_t b = rows[l];
    std::fill(p.dx + (b * T + lens[l]) * I_, p.dx + (b + 1) * T * I_, S(0));
    if (p.datt) std::fill(p.datt + b * T + lens[l], p.datt + (b + 1) * T, S(0));
  }
  int64_t nact = 0;
  const int64_t maxlen = nrows > 0 ? lens[0] : 0;
  for (int64_t t = maxlen - 1; t >= 0; --t) {
    while (nact < nrows && lens[nact] > t) ++nact;
    const int64_t ng = (nact + L - 1) / L;
    if (t > 0) {
      int64_t nnext = nact;  // rows running at step t - 1
      while (nnext < nrows && lens[nnext] > t - 1) ++nnext;
      prefetch_rows(p.x + (t - 1) * I_, rows, T * I_, I_, nnext, false);
      prefetch_rows(p.gout + (t - 1) * H, rows, T * H, H, nnext, false);
      prefetch_rows(p.dx + (t - 1) * I_, rows, T * I_, I_, nnext, true);
      if (t > 1) prefetch_rows<S>(p.out + (t - 2) * H, rows, T * H, H, nnext, false);
    }
    for (int64_t l = 0; l < nact; ++l) {
      const int64_t b = rows[l];
      copy_row<VT>(xrow + l * p.Ipad, p.x + (b * T + t) * I_, I_);
      copy_row<VT>(hrow + l * p.Hpad, t > 0 ? p.out + (b * T + t - 1) * H : p.h0 + b * H, H);
      copy_row<VT>(grow + l * p.Hpad, p.gout + (b * T + t) * H, H);
      if (p.has_att) av[l] = p.att[b * T + t];
    }
    rows_to_t<VT, false>(xh, xrow, p.Ipad, I_, ng);
    rows_to_t<VT, false>(xh + I_ * RB, hrow, p.Hpad, H, ng);
    rows_to_t<VT, true>(dh, grow, p.Hpad, H, ng);
    dispatch_nba<kNB>(ng, [&](auto nba) __attribute__((always_inline)) {
      bwd_step<VT, nba.value>(p, xh, G, dG, dh, dxT, xrow, hrow, av, dav, dbv, part, nact);
    });
    t_to_rows<VT>(xrow, p.Ipad, dxT, I_, ng);  // xrow is free again: stage dx_t there
    for (int64_t l = 0; l < nact; ++l) copy_row<VT>(p.dx + (rows[l] * T + t) * I_, xrow + l * p.Ipad, I_);
    if (p.datt)
      for (int64_t l = 0; l < nact; ++l) p.datt[rows[l] * T + t] = dav[l];
  }
  scatter_t<S, RB>(p.dh0, dh, rows, H, H, nrows);
  S* db = part + 3 * Hm * p.Ipad + 3 * Hm * p.Hpad;
  for (int64_t m = 0; m < 4 * Hm; ++m) {
    S s = 0;
    for (int i = 0; i < L; ++i) s += dbv[m * L + i];
    db[m] = s;
  }
}

// ---- entry points, one per instruction set -------------------------------------------------------

// The block runners compiled for each instruction set; everything above is inlined into them.
// (Not target_clones: the vector width must change with the instruction set, see VecT.)
template <typename S, int W>
struct Blocks;
#define UDG_AUGRU_BLOCKS(S, W, ATTR)                                                          \
  template <>                                                                                 \
  struct Blocks<S, W> {                                                                       \
    ATTR static void fwd(const Problem<S>& p, int64_t blk, S* s) { fwd_block<VecT<S, W>>(p, blk, s); } \
    ATTR static void bwd(const Problem<S>& p, int64_t blk, S* s) { bwd_block<VecT<S, W>>(p, blk, s); } \
  };
#if UDG_AUGRU_X86
#define UDG_AUGRU_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))
#define UDG_AUGRU_AVX2 __attribute__((target("avx2,fma")))
UDG_AUGRU_BLOCKS(float, 64, UDG_AUGRU_AVX512)
UDG_AUGRU_BLOCKS(double, 64, UDG_AUGRU_AVX512)
UDG_AUGRU_BLOCKS(float, 32, UDG_AUGRU_AVX2)
UDG_AUGRU_BLOCKS(double, 32, UDG_AUGRU_AVX2)
#endif
UDG_AUGRU_BLOCKS(float, 16, )
UDG_AUGRU_BLOCKS(double, 16, )
#undef UDG_AUGRU_BLOCKS

// Vector width (bytes) of the best instruction set of this CPU, capped by the environment variable
// UDG_FAST_CPU_ISA = avx512 | avx2 | baseline (read on every call: the tests run each path).
int vector_bytes() {
  int best = 16;
#if UDG_AUGRU_X86
  static const int detected = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
      return 64;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 32;
    return 16;
  }();
  best = detected;
#endif
  if (const char* cap = std::getenv("UDG_FAST_CPU_ISA")) {
    const std::string c(cap);
    TORCH_CHECK(c == "avx512" || c == "avx2" || c == "baseline",
                "UDG_FAST_CPU_ISA must be avx512, avx2 or baseline, got '", c, "'");
    best = std::min(best, c == "avx512" ? 64 : c == "avx2" ? 32 : 16);
  }
  return best;
}

// Calls f(std::integral_constant<int, W>) with this CPU's vector width.
template <typename F>
void with_vector_bytes(F&& f) {
  switch (vector_bytes()) {
#if UDG_AUGRU_X86
    case 64: f(std::integral_constant<int, 64>{}); return;
    case 32: f(std::integral_constant<int, 32>{}); return;
#endif
    default: f(std::integral_constant<int, 16>{}); return;
  }
}

// Runs every block, longest first, on at::get_num_threads() workers. Each block writes only its
// own rows and its own partial, so the result does not depend on the schedule.
template <typename S, int W>
void run_blocks(bool fwd, const Problem<S>& p) {
  using VT = VecT<S, W>;
  constexpr int RB = rows_per_block<VT>();
  const int64_t nblocks = (p.B + RB - 1) / RB;
  if (nblocks == 0) return;
  const int64_t ssize = round_up(fwd ? fwd_scratch_size<VT>(p) : bwd_scratch_size<VT>(p), 64 / sizeof(S));
  const int64_t nworkers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), nblocks));
  // 64-byte aligned (c10's CPU allocator), one slice per worker.
  at::Tensor scratch = at::empty({nworkers * ssize}, at::TensorOptions().dtype(c10::CppTypeToScalarType<S>::value));
  S* base = scratch.data_ptr<S>();
  std::atomic<int64_t> next{0};
  at::parallel_for(0, nworkers, 1, [&](int64_t w0, int64_t w1) {
    S* s = base + w0 * ssize;
    for (int64_t w = w0; w < w1; ++w) {
      for (int64_t blk = next.fetch_add(1); blk < nblocks; blk = next.fetch_add(1)) {
        if (fwd)
          Blocks<S, W>::fwd(p, blk, s);
        else
          Blocks<S, W>::bwd(p, blk, s);
      }
    }
  });
}

// ---- host side ----------------------------------------------------------------------------------

struct Checked {
  int64_t B, T, I, H;
};

Checked check_inputs(const char* op, const at::Tensor& x, const at::Tensor& weight_ih,
                     const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
                     const std::optional<at::Tensor>& bias_hh, const std::optional<at::Tensor>& att,
                     const std::optional<at::Tensor>& lengths, const at::Tensor& h0) {
  TORCH_CHECK(x.dim() == 3, op, ": x must be [B, T, I], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": the cpu kernel supports float32 and float64, got ", x.scalar_type());
  const int64_t B = x.size(0), T = x.size(1), I = x.size(2);
  TORCH_CHECK(weight_hh.dim() == 2 && weight_hh.size(1) >= 1 && weight_hh.size(0) == 3 * weight_hh.size(1),
              op, ": weight_hh must be [3H, H] with H >= 1, got ", weight_hh.sizes());
  const int64_t H = weight_hh.size(1);
  TORCH_CHECK(weight_ih.dim() == 2 && weight_ih.size(0) == 3 * H && weight_ih.size(1) == I, op,
              ": weight_ih must be [3H, I] = [", 3 * H, ", ", I, "], got ", weight_ih.sizes());
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == H, op, ": h0 must be [B, H] = [",
              B, ", ", H, "], got ", h0.sizes());
  auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
                ", expected that of x (", x.scalar_type(), ")");
    TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
  };
  same(x, "x");
  same(weight_ih, "weight_ih");
  same(weight_hh, "weight_hh");
  same(h0, "h0");
  for (auto [b, name] : {std::pair{&bias_ih, "bias_ih"}, std::pair{&bias_hh, "bias_hh"}}) {
    if (!b->has_value()) continue;
    TORCH_CHECK((*b)->dim() == 1 && (*b)->size(0) == 3 * H, op, ": ", name, " must be [3H] = [",
                3 * H, "], got ", (*b)->sizes());
    same(**b, name);
  }
  if (att.has_value()) {
    TORCH_CHECK(att->dim() == 2 && att->size(0) == B && att->size(1) == T, op,
                ": att must be [B, T] = [", B, ", ", T, "], got ", att->sizes());
    same(*att, "att");
  }
  if (lengths.has_value()) {
    TORCH_CHECK(lengths->scalar_type() == at::kLong, op, ": lengths must be int64, got ",
                lengths->scalar_type());
    TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == B, op, ": lengths must be [B] = [", B,
                "], got ", lengths->sizes());
    TORCH_CHECK(lengths->device().is_cpu(), op, ": lengths must be a CPU tensor, got ",
                lengths->device());
    auto lc = lengths->contiguous();
    const int64_t* l = lc.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b)
      TORCH_CHECK(l[b] >= 0 && l[b] <= T, op, ": lengths must be in [0, T] = [0, ", T,
                  "], got lengths[", b, "] = ", l[b]);
  }
  return {B, T, I, H};
}

// Rows sorted by length, descending; ties keep their order (deterministic).
void sort_rows(const std::optional<at::Tensor>& lengths, int64_t B, int64_t T,
               std::vector<int64_t>& order, std::vector<int64_t>& slen) {
  order.resize(B);
  slen.resize(B);
  std::iota(order.begin(), order.end(), 0);
  if (!lengths.has_value()) {
    std::fill(slen.begin(), slen.end(), T);
    return;
  }
  auto lc = lengths->contiguous();
  const int64_t* l = lc.data_ptr<int64_t>();
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return l[a] > l[b]; });
  for (int64_t i = 0; i < B; ++i) slen[i] = l[order[i]];
}

template <typename S>
struct Packed {
  std::vector<S> wg, brz, bin, bhn, wihT, whhT;
};

// Pack the weights into the layouts of Problem (zero rows pad H to Hm, I to Im).
template <typename S>
void pack(Problem<S>& p, Packed<S>& k, const at::Tensor& wih, const at::Tensor& whh,
          const std::optional<at::Tensor>& bih, const std::optional<at::Tensor>& bhh, bool backward) {
  const int64_t I = p.I, H = p.H, Hm = p.Hm, K = p.K;
  const S* wi = wih.data_ptr<S>();
  const S* wh = whh.data_ptr<S>();
  at::Tensor bic = bih.has_value() ? bih->contiguous() : at::Tensor();
  at::Tensor bhc = bhh.has_value() ? bhh->contiguous() : at::Tensor();
  const S* bi = bic.defined() ? bic.data_ptr<S>() : nullptr;
  const S* bh = bhc.defined() ? bhc.data_ptr<S>() : nullptr;
  k.wg.assign(3 * Hm * K, S(0));
  k.brz.assign(2 * Hm, S(0));
  k.bin.assign(Hm, S(0));
  k.bhn.assign(Hm, S(0));
  for (int64_t g = 0; g < 3; ++g)
    for (int64_t j = 0; j < H; ++j) {
      S* row = k.wg.data() + (g * Hm + j) * K;
      std::copy(wi + (g * H + j) * I, wi + (g * H + j + 1) * I, row);
      std::copy(wh + (g * H + j) * H, wh + (g * H + j + 1) * H, row + I);
      const S bi_ = bi ? bi[g * H + j] : S(0), bh_ = bh ? bh[g * H + j] : S(0);
      if (g < 2) {
        k.brz[g * Hm + j] = bi_ + bh_;
      } else {
        k.bin[j] = bi_;
        k.bhn[j] = bh_;
      }
    }
  p.wg = k.wg.data();
  p.brz = k.brz.data();
  p.bin = k.bin.data();
  p.bhn = k.bhn.data();
  if (!backward) return;
  k.wihT.assign(p.Im * 3 * Hm, S(0));
  k.whhT.assign(Hm * 3 * Hm, S(0));
  for (int64_t g = 0; g < 3; ++g)
    for (int64_t j = 0; j < H; ++j) {
      for (int64_t i = 0; i < I; ++i) k.wihT[i * 3 * Hm + g * Hm + j] = wi[(g * H + j) * I + i];
      for (int64_t i = 0; i < H; ++i) k.whhT[i * 3 * Hm + g * Hm + j] = wh[(g * H + j) * H + i];
    }
  p.wihT = k.wihT.data();
  p.whhT = k.whhT.data();
}

// Sizes padded for vectors of L lanes (the padding, and so the block layout, depends on the
// instruction set).
template <typename S>
void setup(Problem<S>& p, const Checked& c, int L) {
  p.B = c.B;
  p.T = c.T;
  p.I = c.I;
  p.H = c.H;
  p.Hm = round_up(c.H, kMR);
  p.Im = round_up(c.I, kMR);
  p.Ipad = round_up(c.I, L);
  p.Hpad = round_up(c.H, L);
  p.K = c.I + c.H;
  p.Hr = std::max(p.Hm, p.Hpad);
  p.Ir = std::max(p.Im, p.Ipad);
}

template <typename S, int W>
void forward_impl(const Checked& c, const at::Tensor& x, const at::Tensor& wih,
                  const at::Tensor& whh, const std::optional<at::Tensor>& bih,
                  const std::optional<at::Tensor>& bhh, const at::Tensor& att,
                  const std::optional<at::Tensor>& lengths, const at::Tensor& h0, at::Tensor& out,
                  at::Tensor& hn) {
  Problem<S> p;
  setup(p, c, VecT<S, W>::L);
  Packed<S> k;
  pack(p, k, wih, whh, bih, bhh, /*backward=*/false);
  std::vector<int64_t> order, slen;
  sort_rows(lengths, c.B, c.T, order, slen);
  p.order = order.data();
  p.slen = slen.data();
  p.has_att = att.defined();
  p.x = x.data_ptr<S>();
  p.att = att.defined() ? att.data_ptr<S>() : nullptr;
  p.h0 = h0.data_ptr<S>();
  p.out = out.data_ptr<S>();
  p.hn = hn.data_ptr<S>();
  run_blocks<S, W>(true, p);
}

template <typename S, int W>
void backward_impl(const Checked& c, const at::Tensor& gout, const at::Tensor& ghn,
                   const at::Tensor& x, const at::Tensor& wih, const at::Tensor& whh,
                   const std::optional<at::Tensor>& bih, const std::optional<at::Tensor>& bhh,
                   const at::Tensor& att, const std::optional<at::Tensor>& lengths,
                   const at::Tensor& h0, const at::Tensor& outputs, at::Tensor& dx,
                   at::Tensor& dwih, at::Tensor& dwhh, at::Tensor& dbih, at::Tensor& dbhh,
                   at::Tensor& datt, at::Tensor& dh0) {
  constexpr int RB = rows_per_block<VecT<S, W>>();
  Problem<S> p;
  setup(p, c, VecT<S, W>::L);
  Packed<S> k;
  pack(p, k, wih, whh, bih, bhh, /*backward=*/true);
  std::vector<int64_t> order, slen;
  sort_rows(lengths, c.B, c.T, order, slen);
  p.order = order.data();
  p.slen = slen.data();
  p.has_att = att.defined();
  p.x = x.data_ptr<S>();
  p.att = att.defined() ? att.data_ptr<S>() : nullptr;
  p.h0 = h0.data_ptr<S>();
  p.out = const_cast<S*>(outputs.data_ptr<S>());  // read only in backward
  p.gout = gout.data_ptr<S>();
  p.ghn = ghn.data_ptr<S>();
  p.dx = dx.data_ptr<S>();
  p.datt = att.defined() ? datt.data_ptr<S>() : nullptr;
  p.dh0 = dh0.data_ptr<S>();
  const int64_t Hm = p.Hm, H = p.H, I = p.I;
  p.part_size = round_up(3 * Hm * p.Ipad + 3 * Hm * p.Hpad + 4 * Hm, 64 / sizeof(S));
  const int64_t nblocks = (c.B + RB - 1) / RB;
  at::Tensor partial = at::empty({std::max<int64_t>(1, nblocks) * p.part_size}, x.options());
  p.partial = partial.data_ptr<S>();
  run_blocks<S, W>(false, p);

  // Sum the per-block partials in block order (deterministic).
  const S* part = p.partial;
  const int64_t ps = p.part_size;
  S* dwi = dwih.data_ptr<S>();
  S* dwh = dwhh.data_ptr<S>();
  at::parallel_for(0, 3 * H, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t g = r / H, j = r % H, m = g * Hm + j;
      S* oi = dwi + r * I;
      S* oh = dwh + r * H;
      std::fill(oi, oi + I, S(0));
      std::fill(oh, oh + H, S(0));
      for (int64_t b = 0; b < nblocks; ++b) {
        const S* pi = part + b * ps + m * p.Ipad;
        const S* ph = part + b * ps + 3 * Hm * p.Ipad + m * p.Hpad;
        for (int64_t i = 0; i < I; ++i) oi[i] += pi[i];
        for (int64_t i = 0; i < H; ++i) oh[i] += ph[i];
      }
    }
  });
  S* dbi = dbih.data_ptr<S>();
  S* dbh = dbhh.data_ptr<S>();
  for (int64_t g = 0; g < 3; ++g)
    for (int64_t j = 0; j < H; ++j) {
      S si = 0, sh = 0;
      const int64_t mi = (g < 2 ? g : 2) * Hm + j, mh = (g < 2 ? g : 3) * Hm + j;
      for (int64_t b = 0; b < nblocks; ++b) {
        const S* db = part + b * ps + 3 * Hm * p.Ipad + 3 * Hm * p.Hpad;
        si += db[mi];
        sh += db[mh];
      }
      dbi[g * H + j] = si;
      dbh[g * H + j] = sh;
    }
}

std::optional<at::Tensor> contig(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return std::nullopt;
  return t->contiguous();
}

}  // namespace augru_detail

std::tuple<at::Tensor, at::Tensor> augru_forward(
    const at::Tensor& x_, const at::Tensor& weight_ih_, const at::Tensor& weight_hh_,
    const std::optional<at::Tensor>& bias_ih_, const std::optional<at::Tensor>& bias_hh_,
    const std::optional<at::Tensor>& att_, const std::optional<at::Tensor>& lengths,
    const at::Tensor& h0_) {
  using namespace augru_detail;
  const Checked c = check_inputs("udg_fast::augru", x_, weight_ih_, weight_hh_, bias_ih_, bias_hh_,
                                 att_, lengths, h0_);
  auto x = x_.contiguous();
  auto wih = weight_ih_.contiguous();
  auto whh = weight_hh_.contiguous();
  auto bih = contig(bias_ih_), bhh = contig(bias_hh_);
  at::Tensor att = att_.has_value() ? att_->contiguous() : at::Tensor();
  auto h0 = h0_.contiguous();
  auto out = at::empty({c.B, c.T, c.H}, x.options());
  auto hn = at::empty({c.B, c.H}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "udg_fast::augru", [&] {
    with_vector_bytes([&](auto w) {
      forward_impl<scalar_t, w.value>(c, x, wih, whh, bih, bhh, att, lengths, h0, out, hn);
    });
  });
  return {out, hn};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
augru_backward(const at::Tensor& grad_outputs, const at::Tensor& grad_h_n, const at::Tensor& x_,
               const at::Tensor& weight_ih_, const at::Tensor& weight_hh_,
               const std::optional<at::Tensor>& bias_ih_, const std::optional<at::Tensor>& bias_hh_,
               const std::optional<at::Tensor>& att_, const std::optional<at::Tensor>& lengths,
               const at::Tensor& h0_, const at::Tensor& outputs_) {
  using namespace augru_detail;
  const char* op = "udg_fast::augru_backward";
  const Checked c = check_inputs(op, x_, weight_ih_, weight_hh_, bias_ih_, bias_hh_, att_, lengths, h0_);
  for (auto [t, name, n] : {std::tuple{&grad_outputs, "grad_outputs", 3}, std::tuple{&outputs_, "outputs", 3},
                            std::tuple{&grad_h_n, "grad_h_n", 2}}) {
    const std::vector<int64_t> want = n == 3 ? std::vector<int64_t>{c.B, c.T, c.H}
                                             : std::vector<int64_t>{c.B, c.H};
    TORCH_CHECK(t->sizes() == at::IntArrayRef(want), op, ": ", name, " has shape ", t->sizes(),
                ", expected ", at::IntArrayRef(want));
    TORCH_CHECK(t->scalar_type() == x_.scalar_type() && t->device().is_cpu(), op, ": ", name,
                " must be a CPU tensor of dtype ", x_.scalar_type());
  }
  auto x = x_.contiguous();
  auto wih = weight_ih_.contiguous();
  auto whh = weight_hh_.contiguous();
  auto bih = contig(bias_ih_), bhh = contig(bias_hh_);
  at::Tensor att = att_.has_value() ? att_->contiguous() : at::Tensor();
  auto h0 = h0_.contiguous();
  auto gout = grad_outputs.contiguous();
  auto ghn = grad_h_n.contiguous();
  auto outputs = outputs_.contiguous();
  auto dx = at::empty_like(x);
  auto dwih = at::empty_like(wih);
  auto dwhh = at::empty_like(whh);
  auto dbih = at::empty({3 * c.H}, x.options());
  auto dbhh = at::empty({3 * c.H}, x.options());
  auto datt = att.defined() ? at::empty({c.B, c.T}, x.options()) : at::zeros({c.B, c.T}, x.options());
  auto dh0 = at::empty_like(h0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "udg_fast::augru_backward", [&] {
    with_vector_bytes([&](auto w) {
      backward_impl<scalar_t, w.value>(c, gout, ghn, x, wih, whh, bih, bhh, att, lengths, h0,
                                       outputs, dx, dwih, dwhh, dbih, dbhh, datt, dh0);
    });
  });
  return {dx, dwih, dwhh, dbih, dbhh, datt, dh0};
}

}  // namespace udg_fast::cpu

TORCH_LIBRARY_IMPL(udg_fast, CPU, m) {
  m.impl("augru", &udg_fast::cpu::augru_forward);
  m.impl("augru_backward", &udg_fast::cpu::augru_backward);
}
