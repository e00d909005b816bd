// The arithmetic of RMSNorm and 3D RoPE, written once for the CPU (g++) and CUDA (nvcc) kernels.
//
// Every formula the two paths share lives here, so that a CPU test of the C++ kernels also checks
// the math the GPU runs. No torch headers: nvcc compiles the .cu files with this header alone.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MG_HD __host__ __device__ __forceinline__
#else
#define MG_HD inline
#endif

namespace megagoku {
namespace kernels {

// ---------------------------------------------------------------- RMSNorm
// Forward:  inv = 1 / sqrt(mean(x^2) + eps),  y = (x * inv) * w
// Backward: with g = dy * w and xhat = x * inv,
//           dx = inv * (g - xhat * c),  c = inv * sum(g * x) / n
//           dw = sum over rows of dy * xhat

template <typename Acc>
MG_HD Acc square_root(Acc v) {
#if defined(__CUDA_ARCH__)
  return sqrt(v);
#else
  return std::sqrt(v);
#endif
}

template <typename Acc>
MG_HD Acc rms_inverse(Acc sum_sq, int64_t cols, Acc eps) {
  return Acc(1) / square_root(sum_sq / Acc(cols) + eps);
}

// The row constant c of the input gradient, from the row's sum of g * x.
template <typename Acc>
MG_HD Acc rms_grad_coefficient(Acc sum_gx, Acc inv, int64_t cols) {
  return inv * sum_gx / Acc(cols);
}

template <typename Acc>
MG_HD Acc rms_input_grad(Acc g, Acc xhat, Acc coefficient, Acc inv) {
  return inv * (g - xhat * coefficient);
}

// Goku's whole-width Q/K norm is this RMSNorm over a row made of all heads of a token: n is the
// whole width (heads x head_dim, all tensor-parallel ranks together) and the two row sums,
// sum(x^2) forward and sum(g * x) backward, are added over the ranks before these are applied.

// ---------------------------------------------------------------- LayerNorm (no gain)
// Forward:  mean = sum(x) / n,  inv = 1 / sqrt(sum((x - mean)^2) / n + eps),
//           xhat = (x - mean) * inv
// Backward: dx = inv * (g - sum(g) / n - xhat * sum(g * xhat) / n)

template <typename Acc>
MG_HD Acc layer_inverse(Acc sum_centered_sq, int64_t cols, Acc eps) {
  return Acc(1) / square_root(sum_centered_sq / Acc(cols) + eps);
}

template <typename Acc>
MG_HD Acc layer_input_grad(Acc g, Acc xhat, Acc mean_g, Acc mean_gxhat, Acc inv) {
  return inv * (g - mean_g - xhat * mean_gxhat);
}

// ---------------------------------------------------------------- adaLN modulation
// Goku's released block modulates in float32: h * (1 + scale) + shift, h the normalised row
// (a LayerNorm's kept in float32, an RMSNorm's rounded to the activations' type first, as the
// released modules return them), then narrows to the activations' type. Backward, with dy the
// output's gradient: dh = dy * (1 + scale), dshift = sum over the sample's rows of dy,
// dscale = the same sum of dy * h.

template <typename Acc>
MG_HD Acc modulate(Acc h, Acc shift, Acc scale) {
  return h * (Acc(1) + scale) + shift;
}

// ---------------------------------------------------------------- 3D RoPE
// The head dim is split into three even parts rotated by the token's t, h and w positions;
// channels rotate in adjacent pairs (x[2j], x[2j+1]). Pair j belongs to axis 0 for
// j < pairs_t, to axis 1 for j < pairs_t + pairs_h, else to axis 2. Its angle is
// position[axis] * inv_freq[j], multiplied in double and rounded to Acc (as the reference does).

MG_HD int rope_axis(int pair, int pairs_t, int pairs_h) {
  return pair < pairs_t ? 0 : (pair < pairs_t + pairs_h ? 1 : 2);
}

template <typename Acc>
MG_HD Acc rope_angle(int64_t position, double inv_freq) {
  return static_cast<Acc>(static_cast<double>(position) * inv_freq);
}

// Rotate (x0, x1) by the angle whose cosine and sine are (c, s). The backward pass rotates the
// gradient back: the same call with -s.
template <typename Acc>
MG_HD void rotate_pair(Acc x0, Acc x1, Acc c, Acc s, Acc& y0, Acc& y1) {
  y0 = x0 * c - x1 * s;
  y1 = x0 * s + x1 * c;
}

// ---------------------------------------------------------------- bfloat16 on the host
// The CPU kernels store bf16 as raw bits; widening is a shift and narrowing rounds to nearest
// even (NaN stays a quiet NaN), bit for bit what torch (c10::BFloat16) does. Plain integer code,
// so the compiler vectorises it. The CUDA kernels use cuda_bf16.h's intrinsics instead.
struct bf16 {
  uint16_t bits;
};

MG_HD float to_acc(bf16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

MG_HD bf16 bf16_from_float(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{0x7fc0};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}

MG_HD float to_acc(float v) { return v; }
MG_HD double to_acc(double v) { return v; }

// Narrow an accumulator to the storage type T.
template <typename T, typename Acc>
struct Narrow {
  static MG_HD T from(Acc v) { return static_cast<T>(v); }
};
template <>
struct Narrow<bf16, float> {
  static MG_HD bf16 from(float v) { return bf16_from_float(v); }
};

}  // namespace kernels
}  // namespace megagoku
