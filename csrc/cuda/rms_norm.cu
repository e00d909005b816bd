// RMSNorm on CUDA: one warp per row, or for short rows (the 64-wide per-head Q/K norm) a group
// of 8 or 16 lanes per row and 4 or 2 rows per warp, so that no lane idles (one warp on a 64-wide
// bf16 row would leave 24 of its 32 lanes without work); 16-byte vector loads when the rows allow
// them, fp32 accumulation (fp64 for double). Grids are sized to what fits on the GPU at once
// (occupancy), rows taken grid-stride. The backward pass sums each group's weight gradient in its
// own row of shared memory (no atomics: every slot has one writer, rows are taken in order), adds
// the groups' rows in a fixed order into one partial row per block, and a second kernel adds the
// partials in a fixed order: the same inputs give the same bits on every run.
#include <type_traits>

#include "rows.cuh"

namespace megagoku {
namespace kernels {
namespace cuda {
namespace {

// Lanes per row: the fewest (8, 16 or 32) whose vectors cover the row in one step, so that a
// short row takes part of a warp. Both directions and the workspace plan use this one choice.
inline int lanes_for(int64_t cols, int n) { return cols <= 8 * n ? 8 : cols <= 16 * n ? 16 : 32; }

// The rows of warp-sized steps: a warp takes rows base .. base + 32/L - 1, one per group of L
// lanes. The loop bound is the same for every lane of a warp (full-mask shuffles inside); a group
// past the last row computes nothing but still joins its warp's sums.
template <typename T, int N, int L>
__global__ void __launch_bounds__(kRowThreads)
    rms_norm_forward_kernel(const T* __restrict__ x, int64_t x_stride, T* __restrict__ y,
                            int64_t y_stride, const typename Acc<T>::type* __restrict__ w,
                            typename Acc<T>::type* __restrict__ rstd, int64_t rows, int64_t cols,
                            typename Acc<T>::type eps) {
  using A = typename Acc<T>::type;
  using V = Vec<T, N>;
  constexpr int G = 32 / L;
  const int lane = threadIdx.x & (L - 1);
  const int group = (threadIdx.x & 31) / L;
  for (int64_t base = first_warp_row() * G; base < rows; base += warp_row_step() * G) {
    const int64_t r = base + group;
    const bool live = r < rows;
    const T* xr = x + (live ? r : 0) * x_stride;
    A sum_sq = 0;
    if (live) {
      for (int64_t c = lane * N; c < cols; c += L * N) {
        const V v = *reinterpret_cast<const V*>(xr + c);
#pragma unroll
        for (int i = 0; i < N; ++i) {
          const A f = load_acc(v.v[i]);
          sum_sq += f * f;
        }
      }
    }
    const A inv = rms_inverse(warp_sum<L>(sum_sq), cols, eps);
    if (!live) continue;
    if (lane == 0) rstd[r] = inv;
    T* yr = y + r * y_stride;
    // The second sweep re-reads the row from L1/L2 (a row is at most a few KB per warp).
    for (int64_t c = lane * N; c < cols; c += L * N) {
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

template <typename T, int N, int L>
__global__ void __launch_bounds__(kRowThreads)
    rms_norm_backward_kernel(const T* __restrict__ dy, int64_t dy_stride, const T* __restrict__ x,
                             int64_t x_stride, T* __restrict__ dx, int64_t dx_stride,
                             const typename Acc<T>::type* __restrict__ w,
                             const typename Acc<T>::type* __restrict__ rstd,
                             typename Acc<T>::type* __restrict__ dw_partial, int64_t rows,
                             int64_t cols) {
  using A = typename Acc<T>::type;
  using V = Vec<T, N>;
  constexpr int G = 32 / L;
  extern __shared__ unsigned char shared_bytes[];
  const int64_t stride = dw_row_stride<N, L>(cols);
  const int lane = threadIdx.x & (L - 1);
  const int group = (threadIdx.x & 31) / L;
  // This group's row of the block's weight-gradient sums: [kRowWarps * G][stride] in all.
  A* dw_group = reinterpret_cast<A*>(shared_bytes) + ((threadIdx.x >> 5) * G + group) * stride;
  const bool want_dw = dw_partial != nullptr;  // uniform over the grid
  if (want_dw) zero_dw_rows<L>(reinterpret_cast<A*>(shared_bytes), stride);
  for (int64_t base = first_warp_row() * G; base < rows; base += warp_row_step() * G) {
    const int64_t r = base + group;
    const bool live = r < rows;
    const T* dyr = dy + (live ? r : 0) * dy_stride;
    const T* xr = x + (live ? r : 0) * x_stride;
    const A inv = live ? rstd[r] : A(0);
    A sum_gx = 0;
    if (live) {
      for (int64_t c = lane * N; c < cols; c += L * N) {
        const V g = *reinterpret_cast<const V*>(dyr + c);
        const V v = *reinterpret_cast<const V*>(xr + c);
#pragma unroll
        for (int i = 0; i < N; ++i) {
          const A gi = w != nullptr ? load_acc(g.v[i]) * w[c + i] : load_acc(g.v[i]);
          sum_gx += gi * load_acc(v.v[i]);
        }
      }
    }
    const A coef = rms_grad_coefficient(warp_sum<L>(sum_gx), inv, cols);
    if (!live) continue;
    T* dxr = dx + r * dx_stride;
    for (int64_t c = lane * N; c < cols; c += L * N) {
      const V g = *reinterpret_cast<const V*>(dyr + c);
      const V v = *reinterpret_cast<const V*>(xr + c);
      V out;
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const A d = load_acc(g.v[i]);
        const A xhat = load_acc(v.v[i]) * inv;
        out.v[i] = store_as<T>(rms_input_grad(w != nullptr ? d * w[c + i] : d, xhat, coef, inv));
        // = dw_slot<N, L>(c + i): this lane's element i of the chunk starting at c - lane * N.
        if (want_dw) dw_group[c - lane * N + i * L + lane] += d * xhat;
      }
      *reinterpret_cast<V*>(dxr + c) = out;
    }
  }
  if (want_dw) {
    store_block_dw<N, L>(reinterpret_cast<const A*>(shared_bytes), stride, cols, dw_partial);
  }
}

// Calls f(std::integral_constant<int, L>{}) with the lanes per row chosen for cols.
template <typename F>
auto with_lanes(int64_t cols, int n, F&& f) {
  switch (lanes_for(cols, n)) {
    case 8: return f(std::integral_constant<int, 8>{});
    case 16: return f(std::integral_constant<int, 16>{});
    default: return f(std::integral_constant<int, 32>{});
  }
}

template <typename T, int N>
const char* launch_forward(const RmsNormForward& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  return with_lanes(a.cols, N, [&](auto lanes) {
    constexpr int L = decltype(lanes)::value;
    auto kernel = rms_norm_forward_kernel<T, N, L>;
    kernel<<<grid_for_rows(kernel, a.rows, 0, 32 / L), kRowThreads, 0, stream>>>(
        static_cast<const T*>(a.x), a.x_stride, static_cast<T*>(a.y), a.y_stride,
        static_cast<const A*>(a.weight), static_cast<A*>(a.rstd), a.rows, a.cols,
        static_cast<A>(a.eps));
    return launch_error();
  });
}

template <typename T>
const char* forward(const RmsNormForward& a, cudaStream_t stream) {
  constexpr int N = kVec16<T>;
  if (vector_ok(a.x, a.x_stride, a.cols, sizeof(T), N) &&
      vector_ok(a.y, a.y_stride, a.cols, sizeof(T), N)) {
    return launch_forward<T, N>(a, stream);
  }
  return launch_forward<T, 1>(a, stream);
}

// Calls f(N, L) (integral constants) for the backward kernel a call runs: N-element vectors when
// every row allows them, and the lanes per row. The workspace plan and the launch both ask here,
// so they agree on the kernel, hence on its occupancy and block count.
template <typename T, typename F>
auto with_backward_kernel(const RmsNormBackward& a, F&& f) {
  constexpr int N = kVec16<T>;
  const bool vectors = vector_ok(a.dy, a.dy_stride, a.cols, sizeof(T), N) &&
                       vector_ok(a.x, a.x_stride, a.cols, sizeof(T), N) &&
                       vector_ok(a.dx, a.dx_stride, a.cols, sizeof(T), N);
  if (vectors) {
    return with_lanes(a.cols, N,
                      [&](auto lanes) { return f(std::integral_constant<int, N>{}, lanes); });
  }
  return with_lanes(a.cols, 1,
                    [&](auto lanes) { return f(std::integral_constant<int, 1>{}, lanes); });
}

// How the backward runs: the same answer for the workspace size and for the launch.
struct BackwardPlan {
  int blocks;
  size_t shared;
  const char* error;
};

template <typename T>
BackwardPlan plan_backward(const RmsNormBackward& a) {
  using A = typename Acc<T>::type;
  return with_backward_kernel<T>(a, [&](auto n, auto lanes) -> BackwardPlan {
    constexpr int N = decltype(n)::value, L = decltype(lanes)::value;
    auto kernel = rms_norm_backward_kernel<T, N, L>;
    const size_t shared =
        a.dweight != nullptr ? kRowWarps * (32 / L) * dw_row_stride<N, L>(a.cols) * sizeof(A) : 0;
    if (const char* error = allow_shared(kernel, shared)) return {0, shared, error};
    return {grid_for_rows(kernel, a.rows, shared, 32 / L), shared, nullptr};
  });
}

template <typename T>
int64_t workspace_bytes(const RmsNormBackward& a) {
  using A = typename Acc<T>::type;
  if (a.dweight == nullptr) return 0;
  const BackwardPlan plan = plan_backward<T>(a);
  return static_cast<int64_t>(plan.blocks) * a.cols * static_cast<int64_t>(sizeof(A));
}

template <typename T>
const char* backward(const RmsNormBackward& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const BackwardPlan plan = plan_backward<T>(a);
  if (plan.error != nullptr) return plan.error;
  const char* error = with_backward_kernel<T>(a, [&](auto n, auto lanes) {
    constexpr int N = decltype(n)::value, L = decltype(lanes)::value;
    rms_norm_backward_kernel<T, N, L><<<plan.blocks, kRowThreads, plan.shared, stream>>>(
        static_cast<const T*>(a.dy), a.dy_stride, static_cast<const T*>(a.x), a.x_stride,
        static_cast<T*>(a.dx), a.dx_stride, static_cast<const A*>(a.weight),
        static_cast<const A*>(a.rstd),
        a.dweight != nullptr ? static_cast<A*>(a.workspace) : nullptr, a.rows, a.cols);
    return launch_error();
  });
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
