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

// Goku's Q/K RMSNorm over all heads of a token. A row (a token) is `groups` pieces (its heads)
// of `cols` contiguous elements, pieces `group_stride` apart and rows `stride` apart: Q or K read
// where it lies inside a fused per-head QKV output. The mean is over `width` elements: all heads
// of all tensor-parallel ranks (groups * cols in one process). Under tensor parallelism the
// caller passes the row sums already added over the ranks (`WholeWidthPartialSums`, then an
// all-reduce); nullptr: the kernel computes them from this row alone.
struct WholeWidthRmsNormForward {
  DType dtype;
  const void* x;
  int64_t x_stride;
  int64_t x_group_stride;
  void* y;
  int64_t y_stride;
  int64_t y_group_stride;
  const void* weight;  // Acc[groups * cols], or nullptr
  const void* sum_sq;  // Acc[rows]: sum of x^2 over the whole width, or nullptr
  void* rstd;          // Acc[rows]
  int64_t rows;
  int64_t groups;
  int64_t cols;
  int64_t width;
  double eps;
};

struct WholeWidthRmsNormBackward {
  DType dtype;
  const void* dy;
  int64_t dy_stride;
  int64_t dy_group_stride;
  const void* x;
  int64_t x_stride;
  int64_t x_group_stride;
  void* dx;
  int64_t dx_stride;
  int64_t dx_group_stride;
  const void* weight;  // Acc[groups * cols] or nullptr
  const void* rstd;    // Acc[rows] from the forward pass
  const void* sum_gx;  // Acc[rows]: sum of dy * weight * x over the whole width, or nullptr
  void* dweight;       // Acc[groups * cols], or nullptr
  void* workspace;     // CUDA only: whole_width_rms_norm_backward_workspace_cuda() bytes
  int64_t rows;
  int64_t groups;
  int64_t cols;
  int64_t width;
};

// out[r] = sum over row r's pieces of a * weight * b (weight nullptr: ones): this rank's part of
// a whole-width row sum (forward a = b = x; backward a = dy, b = x).
struct WholeWidthPartialSums {
  DType dtype;
  const void* a;
  int64_t a_stride;
  int64_t a_group_stride;
  const void* b;
  int64_t b_stride;
  int64_t b_group_stride;
  const void* weight;  // Acc[groups * cols] or nullptr
  void* out;           // Acc[rows]
  int64_t rows;
  int64_t groups;
  int64_t cols;
};

// The norms Goku's released block modulates: a LayerNorm without gain, or an RMSNorm.
enum class NormKind : int { layer = 0, rms = 1 };

// y = norm(x) * (1 + scale[s]) + shift[s] in Acc, narrowed to the storage type, with s the row's
// sample (`segment`, sorted: a pack's tokens are grouped by sample). A LayerNorm's output stays
// in Acc; an RMSNorm's (times its gain) is rounded to the storage type first (math.h).
struct ModulatedNormForward {
  DType dtype;
  NormKind kind;
  const void* x;
  int64_t x_stride;
  void* y;
  int64_t y_stride;
  const void* weight;  // Acc[cols] (rms only), or nullptr
  const void* shift;   // Acc[samples, cols], rows shift_stride apart
  int64_t shift_stride;
  const void* scale;   // Acc[samples, cols], rows scale_stride apart
  int64_t scale_stride;
  const int64_t* segment;  // [rows], each in [0, samples), sorted
  void* mean;              // Acc[rows] (layer), or nullptr (rms)
  void* rstd;              // Acc[rows]
  int64_t rows;
  int64_t cols;
  int64_t samples;
  double eps;
};

struct ModulatedNormBackward {
  DType dtype;
  NormKind kind;
  const void* dy;
  int64_t dy_stride;
  const void* x;
  int64_t x_stride;
  void* dx;
  int64_t dx_stride;
  const void* weight;  // Acc[cols] or nullptr
  const void* scale;   // as in the forward pass
  int64_t scale_stride;
  const int64_t* segment;
  const void* mean;  // from the forward pass (layer), or nullptr
  const void* rstd;
  void* dshift;   // Acc[samples, cols], contiguous: every sample's row written (0 without rows)
  void* dscale;   // Acc[samples, cols], contiguous
  void* dweight;  // Acc[cols], or nullptr when the gain needs no gradient
  void* workspace;  // CUDA only: modulated_norm_backward_workspace_cuda() bytes
  int64_t rows;
  int64_t cols;
  int64_t samples;
};

// The released block's gated residual: y = x + narrow(gate[s] * out) with the product in Acc
// and s the row's sample (`segment`, sorted). x, out and y share the storage type.
struct GatedResidualForward {
  DType dtype;
  const void* x;
  int64_t x_stride;
  const void* out;
  int64_t out_stride;
  void* y;
  int64_t y_stride;
  const void* gate;  // Acc[samples, cols], rows gate_stride apart
  int64_t gate_stride;
  const int64_t* segment;  // [rows], each in [0, samples), sorted
  int64_t rows;
  int64_t cols;
  int64_t samples;
};

// dout = narrow(dy * gate[s]); dgate[s] = sum over the sample's rows of dy * out. (dx is dy.)
struct GatedResidualBackward {
  DType dtype;
  const void* dy;
  int64_t dy_stride;
  const void* out;
  int64_t out_stride;
  const void* gate;
  int64_t gate_stride;
  const int64_t* segment;
  void* dout;
  int64_t dout_stride;
  void* dgate;      // Acc[samples, cols], contiguous: every sample's row written
  void* workspace;  // CUDA only: gated_residual_backward_workspace_cuda() bytes
  int64_t rows;
  int64_t cols;
  int64_t samples;
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
void whole_width_rms_norm_forward_cpu(const WholeWidthRmsNormForward& args, int threads);
void whole_width_rms_norm_backward_cpu(const WholeWidthRmsNormBackward& args, int threads);
void whole_width_partial_sums_cpu(const WholeWidthPartialSums& args, int threads);
void modulated_norm_forward_cpu(const ModulatedNormForward& args, int threads);
void modulated_norm_backward_cpu(const ModulatedNormBackward& args, int threads);
void gated_residual_forward_cpu(const GatedResidualForward& args, int threads);
void gated_residual_backward_cpu(const GatedResidualBackward& args, int threads);
void rope_3d_cpu(const Rope3d& args, int threads);

// CUDA: launched on `stream` (a cudaStream_t). Each returns nullptr on success, else a message.
const char* rms_norm_forward_cuda(const RmsNormForward& args, void* stream);
int64_t rms_norm_backward_workspace_cuda(const RmsNormBackward& args);
const char* rms_norm_backward_cuda(const RmsNormBackward& args, void* stream);
const char* whole_width_rms_norm_forward_cuda(const WholeWidthRmsNormForward& args, void* stream);
int64_t whole_width_rms_norm_backward_workspace_cuda(const WholeWidthRmsNormBackward& args);
const char* whole_width_rms_norm_backward_cuda(const WholeWidthRmsNormBackward& args,
                                               void* stream);
const char* whole_width_partial_sums_cuda(const WholeWidthPartialSums& args, void* stream);
const char* modulated_norm_forward_cuda(const ModulatedNormForward& args, void* stream);
int64_t modulated_norm_backward_workspace_cuda(const ModulatedNormBackward& args);
const char* modulated_norm_backward_cuda(const ModulatedNormBackward& args, void* stream);
const char* gated_residual_forward_cuda(const GatedResidualForward& args, void* stream);
int64_t gated_residual_backward_workspace_cuda(const GatedResidualBackward& args);
const char* gated_residual_backward_cuda(const GatedResidualBackward& args, void* stream);
const char* rope_3d_cuda(const Rope3d& args, void* stream);

}  // namespace kernels
}  // namespace megagoku
