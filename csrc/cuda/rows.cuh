// What the warp-per-row CUDA kernels share (RMSNorm, the whole-width Q/K norm, the modulated
// norm): the block shape, the grid sized by occupancy, and the fixed-order weight-gradient sum
// (each warp's own row of shared memory, bank-conflict-free, then the warps, then the blocks).
#pragma once

#include "device.cuh"

namespace megagoku {
namespace kernels {
namespace cuda {

constexpr int kRowThreads = 128;  // 4 warps, 4 rows in flight per block
constexpr int kRowWarps = kRowThreads / 32;

// Short rows take a group of L lanes each (L = 8 or 16: 4 or 2 rows per warp), long ones the
// whole warp (L = 32); a lane moves N elements at a time, so a group covers L * N columns a step.
// Where column c of a block's weight-gradient sum lives in its group's row of shared memory.
// Lane l of a group adds columns l*N .. l*N+N-1 of every L*N-wide chunk; stored as-is, the lanes
// would hit N-way conflicting banks. Within each chunk element i of lane l goes to i*L + l.
template <int N, int L = 32>
__device__ __forceinline__ int64_t dw_slot(int64_t c) {
  const int64_t base = c - c % (L * N);
  const int64_t r = c - base;
  return base + (r % N) * L + r / N;
}

template <int N, int L = 32>
__host__ __device__ __forceinline__ int64_t dw_slots(int64_t cols) {
  return (cols + L * N - 1) / (L * N) * (L * N);
}

// The distance between the shared-memory rows of a warp's groups: a whole number of banks plus L,
// so that the groups of one warp (writing slot i*L + l of their own rows) hit 32 distinct banks.
template <int N, int L = 32>
__host__ __device__ __forceinline__ int64_t dw_row_stride(int64_t cols) {
  return L == 32 ? dw_slots<N, L>(cols) : (dw_slots<N, L>(cols) + 31) / 32 * 32 + L;
}

// Zero the block's [kRowWarps * 32 / L][stride] weight-gradient rows (every thread calls it).
template <int L = 32, typename A>
__device__ __forceinline__ void zero_dw_rows(A* shared, int64_t stride) {
  for (int64_t c = threadIdx.x; c < kRowWarps * (32 / L) * stride; c += blockDim.x) shared[c] = 0;
  __syncthreads();
}

// After the rows: the groups' sums added in a fixed order into this block's partial row.
template <int N, int L = 32, typename A>
__device__ __forceinline__ void store_block_dw(const A* shared, int64_t stride, int64_t cols,
                                               A* dw_partial) {
  __syncthreads();
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const int64_t slot = dw_slot<N, L>(c);
    A total = 0;
#pragma unroll
    for (int g = 0; g < kRowWarps * (32 / L); ++g) total += shared[g * stride + slot];
    dw_partial[static_cast<int64_t>(blockIdx.x) * cols + c] = total;
  }
}

// dw[c] = sum over blocks of partial[b, c]. A 32 x 32 thread block takes 32 columns: its rows
// of threads each sum every 32nd partial (coalesced reads), then one row adds the 32 sums.
constexpr int kSumRows = 32;

template <typename A>
__global__ void __launch_bounds__(32 * kSumRows)
    column_sum_kernel(const A* __restrict__ partial, int blocks, int64_t cols, A* __restrict__ out) {
  __shared__ A sums[kSumRows][33];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  A total = 0;
  if (c < cols) {
    for (int b = threadIdx.y; b < blocks; b += kSumRows)
      total += partial[static_cast<int64_t>(b) * cols + c];
  }
  sums[threadIdx.y][threadIdx.x] = total;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    A column = 0;
    for (int y = 0; y < kSumRows; ++y) column += sums[y][threadIdx.x];
    out[c] = column;
  }
}

template <typename A>
__host__ inline const char* launch_column_sum(const A* partial, int blocks, int64_t cols, A* out,
                                              cudaStream_t stream) {
  const int sum_blocks = static_cast<int>((cols + 31) / 32);
  column_sum_kernel<A><<<sum_blocks, dim3(32, kSumRows), 0, stream>>>(partial, blocks, cols, out);
  return launch_error();
}

// As many blocks as can be resident at once (none waiting for a second wave), fewer for few rows
// (a warp takes rows_per_warp rows at a time).
template <typename Kernel>
int grid_for_rows(Kernel kernel, int64_t rows, size_t shared, int rows_per_warp = 1) {
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kRowThreads, shared) !=
          cudaSuccess ||
      per_sm < 1) {
    per_sm = 1;
  }
  const int64_t per_block = static_cast<int64_t>(kRowWarps) * rows_per_warp;
  const int64_t wanted = (rows + per_block - 1) / per_block;
  const int64_t resident = static_cast<int64_t>(sm_count()) * per_sm;
  return static_cast<int>(wanted < resident ? (wanted > 0 ? wanted : 1) : resident);
}

// Dynamic shared memory past 48 KiB must be opted into per kernel; nullptr, or why it cannot.
template <typename Kernel>
const char* allow_shared(Kernel kernel, size_t shared) {
  if (shared <= 48 * 1024) return nullptr;
  int device = 0, limit = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (shared > static_cast<size_t>(limit)) {
    return "rows too long for the weight gradient's shared-memory sum";
  }
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                       static_cast<int>(shared));
  return nullptr;
}

// The warp-per-row loop: rows first, first + step, ... of this warp.
__device__ __forceinline__ int64_t first_warp_row() {
  return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
}
__device__ __forceinline__ int64_t warp_row_step() {
  return (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
}

}  // namespace cuda
}  // namespace kernels
}  // namespace megagoku
