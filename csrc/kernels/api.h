// What the kernels take and the functions that launch them, in plain C++ types.
//
// The torch bindings (csrc/torch/) fill these structs from tensors; the kernels (csrc/cpu/,
// csrc/cuda/) never see a torch header, so nvcc compiles them alone.
#pragma once

#include <cstdint>

namespace megagoku {
namespace kernels {

// The storage type of the activations. The accumulation type `Acc` is double for f64 and float
// for every other type; weights, rstd and weight gradients are passed in Acc.
enum class DType : int { f32 = 0, f64 = 1, bf16 = 2, f16 = 3 };

// y = rms_norm(x) * weight over rows of `cols` contiguous elements; rows are `stride` elements
// apart (a strided view, e.g. the Q heads inside a fused QKV output, needs no copy).
struct RmsNormForward {
  DType dtype;
  const void* x;
  int64_t x_stride;
  void* y;
  int64_t y_stride;
  const void* weight;  // Acc[cols], or nullptr for a norm without a gain
  void* rstd;          // Acc[rows]: 1 / sqrt(mean(x^2) + eps), kept for the backward pass
  int64_t rows;
  int64_t cols;
  double eps;
};

struct RmsNormBackward {
  DType dtype;
  const void* dy;
  int64_t dy_stride;
  const void* x;
  int64_t x_stride;
  void* dx;
  int64_t dx_stride;
  const void* weight;  // Acc[cols] or nullptr
  const void* rstd;    // Acc[rows] from the forward pass
  void* dweight;       // Acc[cols], or nullptr when the weight needs no gradient
  void* workspace;     // CUDA only: rms_norm_backward_workspace_cuda() bytes
  int64_t rows;
  int64_t cols;
};

// Rotate x[tokens, heads, head_dim] (last dim contiguous, the other two strided) by each token's
// (t, h, w) position; `inverse` rotates back (the backward pass). `out` may alias `x`.
struct Rope3d {
  DType dtype;
  const void* x;
  int64_t x_token_stride;
  int64_t x_head_stride;
  void* out;
  int64_t out_token_stride;
  int64_t out_head_stride;
  const int64_t* positions;  // [tokens, 3] contiguous
  const double* inv_freq;    // [head_dim / 2]: theta^(-2k / split[axis]) of each pair
  int64_t tokens;
  int64_t heads;
  int64_t head_dim;
  int pairs_t;  // split[0] / 2
  int pairs_h;  // split[1] / 2
  bool inverse;
};

// The largest head dim the RoPE kernels take (their per-token cos/sin table is on the stack or
// in shared memory).
constexpr int64_t kMaxRopeHeadDim = 1024;

// CPU: OpenMP over rows (tokens), `threads` workers.
void rms_norm_forward_cpu(const RmsNormForward& args, int threads);
void rms_norm_backward_cpu(const RmsNormBackward& args, int threads);
void rope_3d_cpu(const Rope3d& args, int threads);

// CUDA: launched on `stream` (a cudaStream_t). Each returns nullptr on success, else a message.
const char* rms_norm_forward_cuda(const RmsNormForward& args, void* stream);
int64_t rms_norm_backward_workspace_cuda(const RmsNormBackward& args);
const char* rms_norm_backward_cuda(const RmsNormBackward& args, void* stream);
const char* rope_3d_cuda(const Rope3d& args, void* stream);

}  // namespace kernels
}  // namespace megagoku
