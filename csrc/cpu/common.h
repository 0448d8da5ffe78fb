// Helpers shared by the CPU kernels (gated_linear.cpp, din_attention.cpp): the ISA clones
// macro, a vectorisable float sigmoid, per-thread scratch buffers and the dynamic block loop.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>

// at::parallel_for is a header template that is only parallel when the including file is compiled with
// -fopenmp (it defines _OPENMP); without it the row blocks run on one thread and each block GEMM
// opens its own MKL thread team — ~2x slower on 2 cores, and far worse on a busy machine.
#if !defined(_OPENMP)
#warning "udg_fast: compile csrc/cpu with -fopenmp, or at::parallel_for runs serially"
#endif

// target_clones("arch=x86-64-v4") needs GCC 12; elsewhere the loops get baseline (SSE2) vectors.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && \
    defined(__linux__)
#define UDG_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define UDG_CLONES
#endif
#define UDG_INLINE inline __attribute__((always_inline))

namespace udg_fast::cpu::detail {

// std::bit_cast without C++20 (torch 2.11 builds may use C++17); vectorises like a plain move.
template <typename To, typename From>
UDG_INLINE To bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From));
  To r;
  std::memcpy(&r, &v, sizeof r);
  return r;
}

// σ(g) and 1 − σ(g) = σ(−g) for float, branch-free so that GCC vectorises the loops that inline
// it. e = exp(-|g|) ∈ (0, 1]: σ = 1/(1+e) for g ≥ 0, e/(1+e) otherwise (no overflow, no
// cancellation), and 1 − σ the other one of the two, so the backward's σ(1 − σ) keeps full
// relative accuracy for saturated gates (eager's 1 − σ loses it: σ ≈ 1 − 1e-7 → ~10% error).
// exp(t), t ≤ 0: t = n ln2 + r, |r| ≤ ln2/2, Cephes' expf polynomial for exp(r), 2^n assembled
// in the exponent bits. Below t = -87.3 (σ < 1.2e-38) e is flushed to 0.
// NaN in g: every comparison is false, so NaN flows through to σ and 1 − σ.
UDG_INLINE void sigmoid2_f32(float g, float& s, float& om) {
  const float t0 = -std::fabs(g);
  const float t = t0 < -87.3f ? -87.3f : t0;  // keeps 2^n a normal number; NaN stays NaN
  // n = round(t / ln2) with the 1.5·2^23 trick (round-to-nearest-even, no rint call needed)
  const float kShift = 12582912.0f;
  const float z = t * 1.44269504088896341f + kShift;
  const float n = z - kShift;
  const float r = (t - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  // n ∈ [-126, 0]: 2^n = bits (n + 127) << 23; n's integer value sits in z's low mantissa bits.
  // (Unsigned arithmetic: for g = NaN the bits are garbage, but p is NaN and wins.)
  const uint32_t ni = bit_cast<uint32_t>(z) - bit_cast<uint32_t>(kShift);
  const float pow2n = bit_cast<float>((ni + 127u) << 23);
  float e = p * pow2n;
  e = t0 < -87.3f ? 0.0f : e;
  const float inv = 1.0f / (1.0f + e);
  const float einv = e * inv;
  const bool pos = g >= 0.0f;
  s = pos ? inv : einv;
  om = pos ? einv : inv;
}

UDG_INLINE void sigmoid2_f64(double g, double& s, double& om) {
  // Same split as above; scalar std::exp (float64 exists for gradcheck).
  const double e = std::exp(-std::fabs(g));
  const double inv = 1.0 / (1.0 + e);
  const double einv = e * inv;
  const bool pos = g >= 0.0;
  s = pos ? inv : einv;
  om = pos ? einv : inv;
}

template <typename T>
UDG_INLINE void sigmoid2(T g, T& s, T& om) {
  if constexpr (std::is_same_v<T, float>) {
    sigmoid2_f32(g, s, om);
  } else {
    sigmoid2_f64(g, s, om);
  }
}

// relu that keeps NaN (torch.relu(NaN) = NaN).
template <typename T>
UDG_INLINE T relu_nan(T v) {
  return v < T(0) ? T(0) : v;
}

// Per-thread block buffers, kept from call to call. Allocated per call (~0.25-1 MiB per thread),
// they page-fault afresh whenever glibc serves that size by mmap, which depends on the process's
// allocation history (perf: up to 20% of a backward in page-fault handling, most of it for the
// dx/dg outputs, which must be fresh anyway). Buffers above kMaxCachedScratch are allocated per
// call instead, so that a huge K does not pin memory.
constexpr size_t kMaxCachedScratch = size_t(16) << 20;

struct ScratchBuf {
  std::unique_ptr<unsigned char[]> mem;
  size_t cap = 0;
};

// A 64-byte-aligned buffer of at least `bytes` for the calling thread; `fallback` holds it when it
// is too large to cache. Valid until this thread's next call.
inline void* thread_scratch(size_t bytes, at::Tensor& fallback) {
  if (bytes > kMaxCachedScratch) {
    fallback = at::empty({static_cast<int64_t>(bytes + 64)}, at::TensorOptions().dtype(at::kByte));
    const auto p = reinterpret_cast<uintptr_t>(fallback.mutable_data_ptr());
    return reinterpret_cast<void*>((p + 63) & ~uintptr_t(63));
  }
  thread_local ScratchBuf buf;
  if (buf.cap < bytes) {
    buf.mem.reset(new unsigned char[bytes + 64]);
    buf.cap = bytes;
  }
  const auto p = reinterpret_cast<uintptr_t>(buf.mem.get());
  return reinterpret_cast<void*>((p + 63) & ~uintptr_t(63));
}

// Runs body(i, buf) for i in [0, n) on up to `threads` threads, each taking the next i as it
// finishes the last (dynamic schedule: a thread slowed by other load on the machine holds up at
// most one item, not half the work). buf: `scratch_elems` elements of T of the thread's own
// scratch memory.
template <typename T, typename Body>
void parallel_items(int64_t n, int64_t threads, int64_t scratch_elems, const Body& body) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::max<int64_t>(1, std::min(threads, n)), 1, [&](int64_t, int64_t) {
    // The block GEMMs need no autograd: skip the VariableType layer (per thread: OpenMP workers
    // do not inherit the caller's dispatch TLS).
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor fallback;
    T* buf = static_cast<T*>(thread_scratch(sizeof(T) * scratch_elems, fallback));
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) body(i, buf);
  });
}

// Weight-gradient partials of the backward kernels: fixed contiguous ranges ("groups") of row
// blocks, each with its own dW / db partial, summed in group order at the end. Which thread runs
// a group does not matter, so the gradients depend only on the group count (blocks and threads):
// bit-identical run to run. Two groups per thread let the dynamic schedule even out a thread
// slowed by other load, at the cost of one more partial to allocate and sum.
constexpr int64_t kGroupsPerThread = 2;

inline int64_t group_count(int64_t blocks, int64_t threads) {
  return std::max<int64_t>(1, std::min(blocks, threads * kGroupsPerThread));
}

template <typename T>
UDG_INLINE void add_body(T* __restrict a, const T* __restrict b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) a[i] += b[i];
}

// The offset of the next gradient in a packed partial / total buffer: a multiple of 16 elements, so
// that each gradient returned as a view of the buffer starts 64-byte aligned (the buffer itself is
// from at::empty/zeros, 64-byte aligned). torch.compile (Inductor) asserts that a custom op's
// outputs are 16-byte aligned; an unpadded view failed that assert on an H200 (2026-11-28).
inline int64_t aligned_offset(int64_t n) { return (n + 15) / 16 * 16; }

// a[0:n] += b[0:n] (float32: a vectorised clone per ISA level; float64: plain). Internal linkage:
// each kernel file gets its own clones and resolver.
namespace {
[[maybe_unused]] UDG_CLONES void add_inplace(float* a, const float* b, int64_t n) {
  add_body<float>(a, b, n);
}
[[maybe_unused]] void add_inplace(double* a, const double* b, int64_t n) {
  add_body<double>(a, b, n);
}
}  // namespace

// out[0:P] = Σ_g parts[g, 0:P], g = 0 … ngroup − 1 in order (see kGroupsPerThread).
template <typename T>
void sum_groups(const T* parts, int64_t ngroup, int64_t P, T* out) {
  std::copy(parts, parts + P, out);
  for (int64_t g = 1; g < ngroup; ++g) add_inplace(out, parts + g * P, P);
}

// A [rows, cols] tensor over scratch memory, for the GEMM calls.
inline at::Tensor view_of(void* p, int64_t rows, int64_t cols, const at::TensorOptions& opts) {
  return at::from_blob(p, {rows, cols}, opts);
}

// An argument check of the CPU ops: `t` is a CPU tensor of `dtype` (that of the op's first input,
// `first`) with `dim` dimensions; the error names the op and the argument.
inline void check_cpu_tensor(const char* op, const at::Tensor& t, const char* name,
                             at::ScalarType dtype, const char* first, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), op, " (CPU): ", name, " must be a CPU tensor, got device ",
              t.device());
  TORCH_CHECK(t.scalar_type() == dtype, op, " (CPU): ", name, " has dtype ", t.scalar_type(),
              ", expected ", dtype, " (the dtype of ", first, ")");
  TORCH_CHECK(t.dim() == dim, op, " (CPU): ", name, " must be ", dim, "-D, got shape ",
              t.sizes());
}

// C[M, N] = A[M, K] · B[K, N], all row-major with leading dimensions lda, ldb, ldc (a block GEMM
// inside a kernel, on one thread). float32: oneDNN's brgemm micro-kernel through ATen's cpublas
// (public since torch 2.6; CPUBLAS_BRGEMM_F32F32F32 says this torch has it), which skips the
// dispatcher and tensor objects and, on the development machine's Zen 4, runs the kernels' block
// shapes ~20 % faster than at::mm_out, i.e. MKL's generic path on AMD (one thread, 512 rows:
// 512 × 72 · 72 × 80 88 vs 74 GFLOP/s, 512 × 80 · 80 × 40 67 vs 57; results bit-identical).
// float64 (gradcheck), or a torch without it: at::mm_out on strided views.
template <typename T>
void gemm_nn(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T* C, int64_t ldc, const at::TensorOptions& opts) {
  if (M == 0 || N == 0) return;
#if defined(CPUBLAS_BRGEMM_F32F32F32)
  if constexpr (std::is_same_v<T, float>) {
    if (K > 0) {
      at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, /*add_C=*/false, A, B, C,
                                  /*is_vnni=*/false);
      return;
    }
  }
#endif
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  at::mm_out(c, at::from_blob(const_cast<T*>(A), {M, K}, {lda, 1}, opts),
             at::from_blob(const_cast<T*>(B), {K, N}, {ldb, 1}, opts));
}

}  // namespace udg_fast::cpu::detail
