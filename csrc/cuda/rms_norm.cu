// RMSNorm on CUDA: one warp per row, 16-byte vector loads when the rows allow them, fp32
// accumulation (fp64 for double). Grids are sized to what fits on the GPU at once (occupancy),
// rows taken grid-stride. The backward pass sums each warp's weight gradient in its own row of
// shared memory (no atomics: every slot has one writer, rows are taken in order), adds the warps'
// rows in a fixed order into one partial row per block, and a second kernel adds the partials in
// a fixed order: the same inputs give the same bits on every run.
#include "rows.cuh"

namespace megagoku {
namespace kernels {
namespace cuda {
namespace {

template <typename T, int N>
__global__ void __launch_bounds__(kRowThreads)
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
__global__ void __launch_bounds__(kRowThreads)
    rms_norm_backward_kernel(const T* __restrict__ dy, int64_t dy_stride, const T* __restrict__ x,
                             int64_t x_stride, T* __restrict__ dx, int64_t dx_stride,
                             const typename Acc<T>::type* __restrict__ w,
                             const typename Acc<T>::type* __restrict__ rstd,
                             typename Acc<T>::type* __restrict__ dw_partial, int64_t rows,
                             int64_t cols) {
  using A = typename Acc<T>::type;
  using V = Vec<T, N>;
  extern __shared__ unsigned char shared_bytes[];
  const int64_t slots = dw_slots<N>(cols);
  const int lane = threadIdx.x & 31;
  // This warp's row of the block's weight-gradient sums: [kRowWarps][slots] in all.
  A* dw_warp = reinterpret_cast<A*>(shared_bytes) + (threadIdx.x >> 5) * slots;
  const bool want_dw = dw_partial != nullptr;  // uniform over the grid
  if (want_dw) {
    for (int64_t c = threadIdx.x; c < kRowWarps * slots; c += blockDim.x) {
      reinterpret_cast<A*>(shared_bytes)[c] = 0;
    }
    __syncthreads();
  }
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
        // = dw_slot<N>(c + i): this lane's element i of the chunk starting at c - lane * N.
        if (want_dw) dw_warp[c - lane * N + i * 32 + lane] += d * xhat;
      }
      *reinterpret_cast<V*>(dxr + c) = out;
    }
  }
  if (want_dw) {
    __syncthreads();
    const A* dw_block = reinterpret_cast<const A*>(shared_bytes);
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const int64_t slot = dw_slot<N>(c);
      A total = 0;
#pragma unroll
      for (int w = 0; w < kRowWarps; ++w) total += dw_block[w * slots + slot];
      dw_partial[static_cast<int64_t>(blockIdx.x) * cols + c] = total;
    }
  }
}

template <typename T>
const char* forward(const RmsNormForward& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  constexpr int N = kVec16<T>;
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  const A* w = static_cast<const A*>(a.weight);
  A* rstd = static_cast<A*>(a.rstd);
  const A eps = static_cast<A>(a.eps);
  if (vector_ok(a.x, a.x_stride, a.cols, sizeof(T), N) &&
      vector_ok(a.y, a.y_stride, a.cols, sizeof(T), N)) {
    auto kernel = rms_norm_forward_kernel<T, N>;
    kernel<<<grid_for_rows(kernel, a.rows, 0), kRowThreads, 0, stream>>>(
        x, a.x_stride, y, a.y_stride, w, rstd, a.rows, a.cols, eps);
  } else {
    auto kernel = rms_norm_forward_kernel<T, 1>;
    kernel<<<grid_for_rows(kernel, a.rows, 0), kRowThreads, 0, stream>>>(
        x, a.x_stride, y, a.y_stride, w, rstd, a.rows, a.cols, eps);
  }
  return launch_error();
}

// How the backward runs: the same answer for the workspace size and for the launch.
struct BackwardPlan {
  bool vectors;
  int blocks;
  size_t shared;
  const char* error;
};

template <typename T, int N>
BackwardPlan plan_backward_as(const RmsNormBackward& a, bool vectors) {
  using A = typename Acc<T>::type;
  auto kernel = rms_norm_backward_kernel<T, N>;
  const size_t shared = a.dweight != nullptr ? kRowWarps * dw_slots<N>(a.cols) * sizeof(A) : 0;
  if (const char* error = allow_shared(kernel, shared)) return {vectors, 0, shared, error};
  return {vectors, grid_for_rows(kernel, a.rows, shared), shared, nullptr};
}

template <typename T>
BackwardPlan plan_backward(const RmsNormBackward& a) {
  constexpr int N = kVec16<T>;
  const bool vectors = vector_ok(a.dy, a.dy_stride, a.cols, sizeof(T), N) &&
                       vector_ok(a.x, a.x_stride, a.cols, sizeof(T), N) &&
                       vector_ok(a.dx, a.dx_stride, a.cols, sizeof(T), N);
  return vectors ? plan_backward_as<T, N>(a, true) : plan_backward_as<T, 1>(a, false);
}

template <typename T>
int64_t workspace_bytes(const RmsNormBackward& a) {
  using A = typename Acc<T>::type;
  if (a.dweight == nullptr) return 0;
  const BackwardPlan plan = plan_backward<T>(a);
  return static_cast<int64_t>(plan.blocks) * a.cols * static_cast<int64_t>(sizeof(A));
}

template <typename T, int N>
void launch_backward(const RmsNormBackward& a, const BackwardPlan& plan, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  rms_norm_backward_kernel<T, N><<<plan.blocks, kRowThreads, plan.shared, stream>>>(
      static_cast<const T*>(a.dy), a.dy_stride, static_cast<const T*>(a.x), a.x_stride,
      static_cast<T*>(a.dx), a.dx_stride, static_cast<const A*>(a.weight),
      static_cast<const A*>(a.rstd), a.dweight != nullptr ? static_cast<A*>(a.workspace) : nullptr,
      a.rows, a.cols);
}

template <typename T>
const char* backward(const RmsNormBackward& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const BackwardPlan plan = plan_backward<T>(a);
  if (plan.error != nullptr) return plan.error;
  if (plan.vectors) {
    launch_backward<T, kVec16<T>>(a, plan, stream);
  } else {
    launch_backward<T, 1>(a, plan, stream);
  }
  const char* error = launch_error();
  if (error != nullptr || a.dweight == nullptr) return error;
  return launch_column_sum(static_cast<const A*>(a.workspace), plan.blocks, a.cols,
                           static_cast<A*>(a.dweight), stream);
}

}  // namespace
}  // namespace cuda

const char* rms_norm_forward_cuda(const RmsNormForward& args, void* stream) {
  return cuda::with_storage_type(args.dtype, [&](auto type) {
    return cuda::forward<decltype(type)>(args, static_cast<cudaStream_t>(stream));
  });
}

// Sized by the plan of the kernel that will run (storage type and vector width decide its
// occupancy, hence its block count): a plan for another type could give fewer blocks than launch.
int64_t rms_norm_backward_workspace_cuda(const RmsNormBackward& args) {
  int64_t bytes = -1;
  cuda::with_storage_type(args.dtype, [&](auto type) -> const char* {
    bytes = cuda::workspace_bytes<decltype(type)>(args);
    return nullptr;
  });
  return bytes;
}

const char* rms_norm_backward_cuda(const RmsNormBackward& args, void* stream) {
  return cuda::with_storage_type(args.dtype, [&](auto type) {
    return cuda::backward<decltype(type)>(args, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace kernels
}  // namespace megagoku
