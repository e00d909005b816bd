// Goku's whole-width Q/K RMSNorm on CUDA: one warp per token, its lanes walking the token's
// heads x head_dim elements as one row (element j is head j / head_dim, column j % head_dim,
// read where it lies inside the fused QKV output), 16-byte vectors when the strides allow them.
// The gain's gradient is summed as the per-row RMSNorm's (cuda/rows.cuh): per warp in shared
// memory, then the warps, then the blocks, in a fixed order: bit-identical reruns.
#include "rows.cuh"

namespace megagoku {
namespace kernels {
namespace cuda {
namespace {

// The address of flat element j of a row made of pieces `cols` long, `group_stride` apart.
template <typename P>
__device__ __forceinline__ P* at_flat(P* row, int64_t j, int64_t cols, int64_t group_stride) {
  const int64_t g = j / cols;
  return row + g * group_stride + (j - g * cols);
}

template <typename T, int N>
__global__ void __launch_bounds__(kRowThreads)
    whole_width_forward_kernel(const T* __restrict__ x, int64_t x_stride, int64_t x_group_stride,
                               T* __restrict__ y, int64_t y_stride, int64_t y_group_stride,
                               const typename Acc<T>::type* __restrict__ w,
                               const typename Acc<T>::type* __restrict__ sums,
                               typename Acc<T>::type* __restrict__ rstd, int64_t rows,
                               int64_t groups, int64_t cols, int64_t width,
                               typename Acc<T>::type eps) {
  using A = typename Acc<T>::type;
  using V = Vec<T, N>;
  const int lane = threadIdx.x & 31;
  const int64_t n = groups * cols;
  for (int64_t r = first_warp_row(); r < rows; r += warp_row_step()) {
    const T* xr = x + r * x_stride;
    T* yr = y + r * y_stride;
    A inv;
    if (sums != nullptr) {
      inv = rms_inverse(sums[r], width, eps);
    } else {
      A sum_sq = 0;
      for (int64_t j = lane * N; j < n; j += 32 * N) {
        const V v = *reinterpret_cast<const V*>(at_flat(xr, j, cols, x_group_stride));
#pragma unroll
        for (int i = 0; i < N; ++i) {
          const A f = load_acc(v.v[i]);
          sum_sq += f * f;
        }
      }
      inv = rms_inverse(warp_sum(sum_sq), width, eps);
    }
    if (lane == 0) rstd[r] = inv;
    for (int64_t j = lane * N; j < n; j += 32 * N) {
      const V v = *reinterpret_cast<const V*>(at_flat(xr, j, cols, x_group_stride));
      V out;
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const A scaled = load_acc(v.v[i]) * inv;
        out.v[i] = store_as<T>(w != nullptr ? scaled * w[j + i] : scaled);
      }
      *reinterpret_cast<V*>(at_flat(yr, j, cols, y_group_stride)) = out;
    }
  }
}

// out[r] = sum over the row of a * w * b.
template <typename T, int N>
__global__ void __launch_bounds__(kRowThreads)
    whole_width_partial_kernel(const T* __restrict__ a, int64_t a_stride, int64_t a_group_stride,
                               const T* __restrict__ b, int64_t b_stride, int64_t b_group_stride,
                               const typename Acc<T>::type* __restrict__ w,
                               typename Acc<T>::type* __restrict__ out, int64_t rows,
                               int64_t groups, int64_t cols) {
  using A = typename Acc<T>::type;
  using V = Vec<T, N>;
  const int lane = threadIdx.x & 31;
  const int64_t n = groups * cols;
  for (int64_t r = first_warp_row(); r < rows; r += warp_row_step()) {
    A total = 0;
    for (int64_t j = lane * N; j < n; j += 32 * N) {
      const V va = *reinterpret_cast<const V*>(at_flat(a + r * a_stride, j, cols, a_group_stride));
      const V vb = *reinterpret_cast<const V*>(at_flat(b + r * b_stride, j, cols, b_group_stride));
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const A ai = w != nullptr ? load_acc(va.v[i]) * w[j + i] : load_acc(va.v[i]);
        total += ai * load_acc(vb.v[i]);
      }
    }
    total = warp_sum(total);
    if (lane == 0) out[r] = total;
  }
}

template <typename T, int N>
__global__ void __launch_bounds__(kRowThreads)
    whole_width_backward_kernel(const T* __restrict__ dy, int64_t dy_stride,
                                int64_t dy_group_stride, const T* __restrict__ x, int64_t x_stride,
                                int64_t x_group_stride, T* __restrict__ dx, int64_t dx_stride,
                                int64_t dx_group_stride,
                                const typename Acc<T>::type* __restrict__ w,
                                const typename Acc<T>::type* __restrict__ rstd,
                                const typename Acc<T>::type* __restrict__ sums,
                                typename Acc<T>::type* __restrict__ dw_partial, int64_t rows,
                                int64_t groups, int64_t cols, int64_t width) {
  using A = typename Acc<T>::type;
  using V = Vec<T, N>;
  extern __shared__ unsigned char shared_bytes[];
  const int64_t n = groups * cols;
  const int64_t slots = dw_slots<N>(n);
  const int lane = threadIdx.x & 31;
  A* dw_warp = reinterpret_cast<A*>(shared_bytes) + (threadIdx.x >> 5) * slots;
  const bool want_dw = dw_partial != nullptr;  // uniform over the grid
  if (want_dw) zero_dw_rows(reinterpret_cast<A*>(shared_bytes), slots);
  for (int64_t r = first_warp_row(); r < rows; r += warp_row_step()) {
    const T* dyr = dy + r * dy_stride;
    const T* xr = x + r * x_stride;
    T* dxr = dx + r * dx_stride;
    const A inv = rstd[r];
    A sum_gx;
    if (sums != nullptr) {
      sum_gx = sums[r];
    } else {
      sum_gx = 0;
      for (int64_t j = lane * N; j < n; j += 32 * N) {
        const V g = *reinterpret_cast<const V*>(at_flat(dyr, j, cols, dy_group_stride));
        const V v = *reinterpret_cast<const V*>(at_flat(xr, j, cols, x_group_stride));
#pragma unroll
        for (int i = 0; i < N; ++i) {
          const A gi = w != nullptr ? load_acc(g.v[i]) * w[j + i] : load_acc(g.v[i]);
          sum_gx += gi * load_acc(v.v[i]);
        }
      }
      sum_gx = warp_sum(sum_gx);
    }
    const A coef = rms_grad_coefficient(sum_gx, inv, width);
    for (int64_t j = lane * N; j < n; j += 32 * N) {
      const V g = *reinterpret_cast<const V*>(at_flat(dyr, j, cols, dy_group_stride));
      const V v = *reinterpret_cast<const V*>(at_flat(xr, j, cols, x_group_stride));
      V out;
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const A d = load_acc(g.v[i]);
        const A xhat = load_acc(v.v[i]) * inv;
        out.v[i] = store_as<T>(rms_input_grad(w != nullptr ? d * w[j + i] : d, xhat, coef, inv));
        // = dw_slot<N>(j + i): this lane's element i of the chunk starting at j - lane * N.
        if (want_dw) dw_warp[j - lane * N + i * 32 + lane] += d * xhat;
      }
      *reinterpret_cast<V*>(at_flat(dxr, j, cols, dx_group_stride)) = out;
    }
  }
  if (want_dw) store_block_dw<N>(reinterpret_cast<const A*>(shared_bytes), slots, n, dw_partial);
}

// Every access can be an N-element vector: aligned bases, and the piece length and both strides
// multiples of N.
__host__ inline bool grouped_vector_ok(const void* p, int64_t stride, int64_t group_stride,
                                       int64_t cols, int bytes, int n) {
  return vector_ok(p, stride, cols, bytes, n) && group_stride % n == 0;
}

template <typename T>
const char* forward(const WholeWidthRmsNormForward& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  constexpr int N = kVec16<T>;
  const bool vectors =
      grouped_vector_ok(a.x, a.x_stride, a.x_group_stride, a.cols, sizeof(T), N) &&
      grouped_vector_ok(a.y, a.y_stride, a.y_group_stride, a.cols, sizeof(T), N);
  auto launch = [&](auto kernel) {
    kernel<<<grid_for_rows(kernel, a.rows, 0), kRowThreads, 0, stream>>>(
        static_cast<const T*>(a.x), a.x_stride, a.x_group_stride, static_cast<T*>(a.y),
        a.y_stride, a.y_group_stride, static_cast<const A*>(a.weight),
        static_cast<const A*>(a.sum_sq), static_cast<A*>(a.rstd), a.rows, a.groups, a.cols,
        a.width, static_cast<A>(a.eps));
  };
  if (vectors) {
    launch(whole_width_forward_kernel<T, N>);
  } else {
    launch(whole_width_forward_kernel<T, 1>);
  }
  return launch_error();
}

template <typename T>
const char* partial_sums(const WholeWidthPartialSums& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  constexpr int N = kVec16<T>;
  const bool vectors =
      grouped_vector_ok(a.a, a.a_stride, a.a_group_stride, a.cols, sizeof(T), N) &&
      grouped_vector_ok(a.b, a.b_stride, a.b_group_stride, a.cols, sizeof(T), N);
  auto launch = [&](auto kernel) {
    kernel<<<grid_for_rows(kernel, a.rows, 0), kRowThreads, 0, stream>>>(
        static_cast<const T*>(a.a), a.a_stride, a.a_group_stride, static_cast<const T*>(a.b),
        a.b_stride, a.b_group_stride, static_cast<const A*>(a.weight), static_cast<A*>(a.out),
        a.rows, a.groups, a.cols);
  };
  if (vectors) {
    launch(whole_width_partial_kernel<T, N>);
  } else {
    launch(whole_width_partial_kernel<T, 1>);
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
BackwardPlan plan_backward_as(const WholeWidthRmsNormBackward& a, bool vectors) {
  using A = typename Acc<T>::type;
  auto kernel = whole_width_backward_kernel<T, N>;
  const size_t shared =
      a.dweight != nullptr ? kRowWarps * dw_slots<N>(a.groups * a.cols) * sizeof(A) : 0;
  if (const char* error = allow_shared(kernel, shared)) return {vectors, 0, shared, error};
  return {vectors, grid_for_rows(kernel, a.rows, shared), shared, nullptr};
}

template <typename T>
BackwardPlan plan_backward(const WholeWidthRmsNormBackward& a) {
  constexpr int N = kVec16<T>;
  const bool vectors =
      grouped_vector_ok(a.dy, a.dy_stride, a.dy_group_stride, a.cols, sizeof(T), N) &&
      grouped_vector_ok(a.x, a.x_stride, a.x_group_stride, a.cols, sizeof(T), N) &&
      grouped_vector_ok(a.dx, a.dx_stride, a.dx_group_stride, a.cols, sizeof(T), N);
  return vectors ? plan_backward_as<T, N>(a, true) : plan_backward_as<T, 1>(a, false);
}

template <typename T>
int64_t workspace_bytes(const WholeWidthRmsNormBackward& a) {
  using A = typename Acc<T>::type;
  if (a.dweight == nullptr) return 0;
  const BackwardPlan plan = plan_backward<T>(a);
  return static_cast<int64_t>(plan.blocks) * a.groups * a.cols * static_cast<int64_t>(sizeof(A));
}

template <typename T, int N>
void launch_backward(const WholeWidthRmsNormBackward& a, const BackwardPlan& plan,
                     cudaStream_t stream) {
  using A = typename Acc<T>::type;
  whole_width_backward_kernel<T, N><<<plan.blocks, kRowThreads, plan.shared, stream>>>(
      static_cast<const T*>(a.dy), a.dy_stride, a.dy_group_stride, static_cast<const T*>(a.x),
      a.x_stride, a.x_group_stride, static_cast<T*>(a.dx), a.dx_stride, a.dx_group_stride,
      static_cast<const A*>(a.weight), static_cast<const A*>(a.rstd),
      static_cast<const A*>(a.sum_gx), a.dweight != nullptr ? static_cast<A*>(a.workspace) : nullptr,
      a.rows, a.groups, a.cols, a.width);
}

template <typename T>
const char* backward(const WholeWidthRmsNormBackward& a, cudaStream_t stream) {
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
  return launch_column_sum(static_cast<const A*>(a.workspace), plan.blocks, a.groups * a.cols,
                           static_cast<A*>(a.dweight), stream);
}

}  // namespace
}  // namespace cuda

const char* whole_width_rms_norm_forward_cuda(const WholeWidthRmsNormForward& args, void* stream) {
  return cuda::with_storage_type(args.dtype, [&](auto type) {
    return cuda::forward<decltype(type)>(args, static_cast<cudaStream_t>(stream));
  });
}

const char* whole_width_partial_sums_cuda(const WholeWidthPartialSums& args, void* stream) {
  return cuda::with_storage_type(args.dtype, [&](auto type) {
    return cuda::partial_sums<decltype(type)>(args, static_cast<cudaStream_t>(stream));
  });
}

// Sized by the plan of the kernel that will run (see rms_norm_backward_workspace_cuda).
int64_t whole_width_rms_norm_backward_workspace_cuda(const WholeWidthRmsNormBackward& args) {
  int64_t bytes = -1;
  cuda::with_storage_type(args.dtype, [&](auto type) -> const char* {
    bytes = cuda::workspace_bytes<decltype(type)>(args);
    return nullptr;
  });
  return bytes;
}

const char* whole_width_rms_norm_backward_cuda(const WholeWidthRmsNormBackward& args,
                                               void* stream) {
  return cuda::with_storage_type(args.dtype, [&](auto type) {
    return cuda::backward<decltype(type)>(args, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace kernels
}  // namespace megagoku
