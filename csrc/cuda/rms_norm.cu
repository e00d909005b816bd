// RMSNorm on CUDA: one warp per row, 16-byte vector loads when the rows allow them, fp32
// accumulation (fp64 for double). The backward pass sums each block's weight gradient in shared
// memory, writes one partial row per block, and a second kernel adds the partials.
#include "device.cuh"

namespace megagoku {
namespace kernels {
namespace cuda {
namespace {

constexpr int kThreads = 128;  // 4 warps, 4 rows in flight per block
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr int kBackwardBlocksPerSm = 8;

template <typename T, int N>
__global__ void __launch_bounds__(kThreads)
    rms_norm_forward_kernel(const T* __restrict__ x, int64_t x_stride, T* __restrict__ y,
                            int64_t y_stride, const typename Acc<T>::type* __restrict__ w,
                            typename Acc<T>::type* __restrict__ rstd, int64_t rows, int64_t cols,
                            typename Acc<T>::type eps) {
  using A = typename Acc<T>::type;
  using V = Vec<T, N>;
  const int lane = threadIdx.x & 31;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t step = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r = first; r < rows; r += step) {
    const T* xr = x + r * x_stride;
    T* yr = y + r * y_stride;
    A sum_sq = 0;
    for (int64_t c = lane * N; c < cols; c += 32 * N) {
      const V v = *reinterpret_cast<const V*>(xr + c);
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const A f = load_acc(v.v[i]);
        sum_sq += f * f;
      }
    }
    const A inv = rms_inverse(warp_sum(sum_sq), cols, eps);
    if (lane == 0) rstd[r] = inv;
    // The second sweep re-reads the row from L1/L2 (a row is at most a few KB per warp).
    for (int64_t c = lane * N; c < cols; c += 32 * N) {
      const V v = *reinterpret_cast<const V*>(xr + c);
      V out;
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const A scaled = load_acc(v.v[i]) * inv;
        out.v[i] = store_as<T>(w != nullptr ? scaled * w[c + i] : scaled);
      }
      *reinterpret_cast<V*>(yr + c) = out;
    }
  }
}

template <typename T, int N>
__global__ void __launch_bounds__(kThreads)
    rms_norm_backward_kernel(const T* __restrict__ dy, int64_t dy_stride, const T* __restrict__ x,
                             int64_t x_stride, T* __restrict__ dx, int64_t dx_stride,
                             const typename Acc<T>::type* __restrict__ w,
                             const typename Acc<T>::type* __restrict__ rstd,
                             typename Acc<T>::type* __restrict__ dw_partial, int64_t rows,
                             int64_t cols) {
  using A = typename Acc<T>::type;
  using V = Vec<T, N>;
  extern __shared__ unsigned char shared_bytes[];
  A* dw_block = reinterpret_cast<A*>(shared_bytes);
  const bool want_dw = dw_partial != nullptr;  // uniform over the grid
  if (want_dw) {
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) dw_block[c] = 0;
    __syncthreads();
  }
  const int lane = threadIdx.x & 31;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t step = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r = first; r < rows; r += step) {
    const T* dyr = dy + r * dy_stride;
    const T* xr = x + r * x_stride;
    T* dxr = dx + r * dx_stride;
    const A inv = rstd[r];
    A sum_gx = 0;
    for (int64_t c = lane * N; c < cols; c += 32 * N) {
      const V g = *reinterpret_cast<const V*>(dyr + c);
      const V v = *reinterpret_cast<const V*>(xr + c);
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const A gi = w != nullptr ? load_acc(g.v[i]) * w[c + i] : load_acc(g.v[i]);
        sum_gx += gi * load_acc(v.v[i]);
      }
    }
    const A coef = rms_grad_coefficient(warp_sum(sum_gx), inv, cols);
    for (int64_t c = lane * N; c < cols; c += 32 * N) {
      const V g = *reinterpret_cast<const V*>(dyr + c);
      const V v = *reinterpret_cast<const V*>(xr + c);
      V out;
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const A d = load_acc(g.v[i]);
        const A xhat = load_acc(v.v[i]) * inv;
        out.v[i] = store_as<T>(rms_input_grad(w != nullptr ? d * w[c + i] : d, xhat, coef, inv));
        if (want_dw) atomicAdd(&dw_block[c + i], d * xhat);
      }
      *reinterpret_cast<V*>(dxr + c) = out;
    }
  }
  if (want_dw) {
    __syncthreads();
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
      dw_partial[static_cast<int64_t>(blockIdx.x) * cols + c] = dw_block[c];
  }
}

// dw[c] = sum over blocks of partial[b, c]; consecutive threads read consecutive columns.
template <typename A>
__global__ void column_sum_kernel(const A* __restrict__ partial, int blocks, int64_t cols,
                                  A* __restrict__ out) {
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < cols;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    A total = 0;
    for (int b = 0; b < blocks; ++b) total += partial[static_cast<int64_t>(b) * cols + c];
    out[c] = total;
  }
}

int64_t blocks_for_rows(int64_t rows, int per_sm) {
  const int64_t wanted = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int64_t cap = static_cast<int64_t>(sm_count()) * per_sm;
  return wanted < cap ? (wanted > 0 ? wanted : 1) : cap;
}

template <typename T>
const char* forward(const RmsNormForward& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  constexpr int N = kVec16<T>;
  const int blocks = static_cast<int>(blocks_for_rows(a.rows, 16));
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  const A* w = static_cast<const A*>(a.weight);
  A* rstd = static_cast<A*>(a.rstd);
  const A eps = static_cast<A>(a.eps);
  if (vector_ok(a.x, a.x_stride, a.cols, sizeof(T), N) &&
      vector_ok(a.y, a.y_stride, a.cols, sizeof(T), N)) {
    rms_norm_forward_kernel<T, N><<<blocks, kThreads, 0, stream>>>(
        x, a.x_stride, y, a.y_stride, w, rstd, a.rows, a.cols, eps);
  } else {
    rms_norm_forward_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(
        x, a.x_stride, y, a.y_stride, w, rstd, a.rows, a.cols, eps);
  }
  return launch_error();
}

template <typename T>
int64_t workspace_bytes(const RmsNormBackward& a) {
  using A = typename Acc<T>::type;
  if (a.dweight == nullptr) return 0;
  return blocks_for_rows(a.rows, kBackwardBlocksPerSm) * a.cols * static_cast<int64_t>(sizeof(A));
}

template <typename T, int N>
const char* launch_backward(const RmsNormBackward& a, int blocks, size_t shared,
                            cudaStream_t stream) {
  using A = typename Acc<T>::type;
  auto kernel = rms_norm_backward_kernel<T, N>;
  if (shared > 48 * 1024) {
    int device = 0, limit = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (shared > static_cast<size_t>(limit)) return "rows too long for the weight gradient's shared-memory sum";
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared));
  }
  kernel<<<blocks, kThreads, shared, stream>>>(
      static_cast<const T*>(a.dy), a.dy_stride, static_cast<const T*>(a.x), a.x_stride,
      static_cast<T*>(a.dx), a.dx_stride, static_cast<const A*>(a.weight),
      static_cast<const A*>(a.rstd), a.dweight != nullptr ? static_cast<A*>(a.workspace) : nullptr,
      a.rows, a.cols);
  return launch_error();
}

template <typename T>
const char* backward(const RmsNormBackward& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  constexpr int N = kVec16<T>;
  const int blocks = static_cast<int>(blocks_for_rows(a.rows, kBackwardBlocksPerSm));
  const size_t shared = a.dweight != nullptr ? static_cast<size_t>(a.cols) * sizeof(A) : 0;
  const bool vectors = vector_ok(a.dy, a.dy_stride, a.cols, sizeof(T), N) &&
                       vector_ok(a.x, a.x_stride, a.cols, sizeof(T), N) &&
                       vector_ok(a.dx, a.dx_stride, a.cols, sizeof(T), N);
  const char* error = vectors ? launch_backward<T, N>(a, blocks, shared, stream)
                              : launch_backward<T, 1>(a, blocks, shared, stream);
  if (error != nullptr || a.dweight == nullptr) return error;
  const int sum_blocks = static_cast<int>((a.cols + 255) / 256);
  column_sum_kernel<A><<<sum_blocks, 256, 0, stream>>>(static_cast<const A*>(a.workspace), blocks,
                                                       a.cols, static_cast<A*>(a.dweight));
  return launch_error();
}

}  // namespace
}  // namespace cuda

const char* rms_norm_forward_cuda(const RmsNormForward& args, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (args.dtype) {
    case DType::f32: return cuda::forward<float>(args, s);
    case DType::f64: return cuda::forward<double>(args, s);
    case DType::bf16: return cuda::forward<__nv_bfloat16>(args, s);
    case DType::f16: return cuda::forward<__half>(args, s);
  }
  return "unknown dtype";
}

int64_t rms_norm_backward_workspace_cuda(const RmsNormBackward& args) {
  return args.dtype == DType::f64 ? cuda::workspace_bytes<double>(args) : cuda::workspace_bytes<float>(args);
}

const char* rms_norm_backward_cuda(const RmsNormBackward& args, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (args.dtype) {
    case DType::f32: return cuda::backward<float>(args, s);
    case DType::f64: return cuda::backward<double>(args, s);
    case DType::bf16: return cuda::backward<__nv_bfloat16>(args, s);
    case DType::f16: return cuda::backward<__half>(args, s);
  }
  return "unknown dtype";
}

}  // namespace kernels
}  // namespace megagoku
