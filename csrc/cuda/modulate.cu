// The modulated norm and the gated residual of Goku's released block on CUDA.
//
// Forward and the input gradient: one warp per row (cuda/rows.cuh), 16-byte vectors of x, dy, y
// and dx when the rows allow them; shift and scale are the row's sample's rows (L2-resident: a
// pack has few samples). The gain's gradient (RMSNorm) is summed as the per-row norm's.
//
// dshift and dscale (and the gate's gradient) are sums over each sample's rows. The rows are sorted by sample, so a sample
// is one run of rows, found by binary search in `segment`: a second kernel gives each (32
// columns, sample, 1/kSplits of its rows) a 32 x 32 block whose rows of threads take every 32nd
// row, adds its 32 partial sums in a fixed order, and a third adds the kSplits parts in order.
// No atomics: the same inputs give the same bits on every run.
#include "rows.cuh"

namespace megagoku {
namespace kernels {
namespace cuda {
namespace {

constexpr int kSplits = 8;
constexpr int64_t kMaxSamples = 65535;  // the per-sample sums' grid has one y-block per sample

// The normalised value h of element (row, c): a LayerNorm's in A, an RMSNorm's (times its gain)
// rounded to T (math.h).
template <typename T>
__device__ __forceinline__ typename Acc<T>::type normalised(
    NormKind kind, typename Acc<T>::type v, typename Acc<T>::type mean,
    typename Acc<T>::type inv, const typename Acc<T>::type* w, int64_t c) {
  if (kind == NormKind::layer) return (v - mean) * inv;
  const typename Acc<T>::type xhat = v * inv;
  return load_acc(store_as<T>(w != nullptr ? xhat * w[c] : xhat));
}

template <typename T, int N>
__global__ void __launch_bounds__(kRowThreads)
    modulated_forward_kernel(NormKind kind, const T* __restrict__ x, int64_t x_stride,
                             T* __restrict__ y, int64_t y_stride,
                             const typename Acc<T>::type* __restrict__ w,
                             const typename Acc<T>::type* __restrict__ shift, int64_t shift_stride,
                             const typename Acc<T>::type* __restrict__ scale, int64_t scale_stride,
                             const int64_t* __restrict__ segment,
                             typename Acc<T>::type* __restrict__ mean_out,
                             typename Acc<T>::type* __restrict__ rstd, int64_t rows, int64_t cols,
                             typename Acc<T>::type eps) {
  using A = typename Acc<T>::type;
  using V = Vec<T, N>;
  const int lane = threadIdx.x & 31;
  for (int64_t r = first_warp_row(); r < rows; r += warp_row_step()) {
    const T* xr = x + r * x_stride;
    T* yr = y + r * y_stride;
    const int64_t s = segment[r];
    const A* sh = shift + s * shift_stride;
    const A* sc = scale + s * scale_stride;
    A mean = 0;
    A inv;
    if (kind == NormKind::layer) {
      A sum = 0;
      for (int64_t c = lane * N; c < cols; c += 32 * N) {
        const V v = *reinterpret_cast<const V*>(xr + c);
#pragma unroll
        for (int i = 0; i < N; ++i) sum += load_acc(v.v[i]);
      }
      mean = warp_sum(sum) / A(cols);
      A centered = 0;
      for (int64_t c = lane * N; c < cols; c += 32 * N) {
        const V v = *reinterpret_cast<const V*>(xr + c);
#pragma unroll
        for (int i = 0; i < N; ++i) {
          const A d = load_acc(v.v[i]) - mean;
          centered += d * d;
        }
      }
      inv = layer_inverse(warp_sum(centered), cols, eps);
      if (lane == 0) mean_out[r] = mean;
    } else {
      A sum_sq = 0;
      for (int64_t c = lane * N; c < cols; c += 32 * N) {
        const V v = *reinterpret_cast<const V*>(xr + c);
#pragma unroll
        for (int i = 0; i < N; ++i) {
          const A f = load_acc(v.v[i]);
          sum_sq += f * f;
        }
      }
      inv = rms_inverse(warp_sum(sum_sq), cols, eps);
    }
    if (lane == 0) rstd[r] = inv;
    for (int64_t c = lane * N; c < cols; c += 32 * N) {
      const V v = *reinterpret_cast<const V*>(xr + c);
      V out;
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const A h = normalised<T>(kind, load_acc(v.v[i]), mean, inv, w, c + i);
        out.v[i] = store_as<T>(modulate(h, sh[c + i], sc[c + i]));
      }
      *reinterpret_cast<V*>(yr + c) = out;
    }
  }
}

// dx, and the gain's gradient per block (RMSNorm with a gain).
template <typename T, int N>
__global__ void __launch_bounds__(kRowThreads)
    modulated_input_grad_kernel(NormKind kind, const T* __restrict__ dy, int64_t dy_stride,
                                const T* __restrict__ x, int64_t x_stride, T* __restrict__ dx,
                                int64_t dx_stride, const typename Acc<T>::type* __restrict__ w,
                                const typename Acc<T>::type* __restrict__ scale,
                                int64_t scale_stride, const int64_t* __restrict__ segment,
                                const typename Acc<T>::type* __restrict__ mean_in,
                                const typename Acc<T>::type* __restrict__ rstd,
                                typename Acc<T>::type* __restrict__ dw_partial, int64_t rows,
                                int64_t cols) {
  using A = typename Acc<T>::type;
  using V = Vec<T, N>;
  extern __shared__ unsigned char shared_bytes[];
  const int64_t slots = dw_slots<N>(cols);
  const int lane = threadIdx.x & 31;
  A* dw_warp = reinterpret_cast<A*>(shared_bytes) + (threadIdx.x >> 5) * slots;
  const bool want_dw = dw_partial != nullptr;  // uniform over the grid
  if (want_dw) zero_dw_rows(reinterpret_cast<A*>(shared_bytes), slots);
  for (int64_t r = first_warp_row(); r < rows; r += warp_row_step()) {
    const T* dyr = dy + r * dy_stride;
    const T* xr = x + r * x_stride;
    T* dxr = dx + r * dx_stride;
    const A* sc = scale + segment[r] * scale_stride;
    const A inv = rstd[r];
    const A mean = kind == NormKind::layer ? mean_in[r] : A(0);
    // layer: sum of g and of g * xhat; rms: sum of g * w * x (g = dy * (1 + scale)).
    A sum_a = 0, sum_b = 0;
    for (int64_t c = lane * N; c < cols; c += 32 * N) {
      const V g = *reinterpret_cast<const V*>(dyr + c);
      const V v = *reinterpret_cast<const V*>(xr + c);
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const A gi = load_acc(g.v[i]) * (A(1) + sc[c + i]);
        if (kind == NormKind::layer) {
          sum_a += gi;
          sum_b += gi * ((load_acc(v.v[i]) - mean) * inv);
        } else {
          sum_b += (w != nullptr ? gi * w[c + i] : gi) * load_acc(v.v[i]);
        }
      }
    }
    const A mean_g = warp_sum(sum_a) / A(cols);
    const A total_b = warp_sum(sum_b);
    const A mean_gx = total_b / A(cols);
    const A coef = rms_grad_coefficient(total_b, inv, cols);
    for (int64_t c = lane * N; c < cols; c += 32 * N) {
      const V g = *reinterpret_cast<const V*>(dyr + c);
      const V v = *reinterpret_cast<const V*>(xr + c);
      V out;
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const A dh = load_acc(g.v[i]) * (A(1) + sc[c + i]);
        if (kind == NormKind::layer) {
          const A xhat = (load_acc(v.v[i]) - mean) * inv;
          out.v[i] = store_as<T>(layer_input_grad(dh, xhat, mean_g, mean_gx, inv));
        } else {
          const A xhat = load_acc(v.v[i]) * inv;
          out.v[i] = store_as<T>(rms_input_grad(w != nullptr ? dh * w[c + i] : dh, xhat, coef, inv));
          // = dw_slot<N>(c + i): this lane's element i of the chunk starting at c - lane * N.
          if (want_dw) dw_warp[c - lane * N + i * 32 + lane] += dh * xhat;
        }
      }
      *reinterpret_cast<V*>(dxr + c) = out;
    }
  }
  if (want_dw) store_block_dw<N>(reinterpret_cast<const A*>(shared_bytes), slots, cols, dw_partial);
}

// The first row of `segment` (sorted, `rows` long) whose sample is at least s.
__device__ __forceinline__ int64_t first_row_of(const int64_t* segment, int64_t rows, int64_t s) {
  int64_t lo = 0, hi = rows;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (segment[mid] < s) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// partial[s, k, 0 | 1, c] = sums of dy and dy * h over part k of sample s's rows. Grid: (column
// blocks of 32, samples, kSplits); block 32 x kSumRows.
template <typename T>
__global__ void __launch_bounds__(32 * kSumRows)
    sample_sums_kernel(NormKind kind, const T* __restrict__ dy, int64_t dy_stride,
                       const T* __restrict__ x, int64_t x_stride,
                       const typename Acc<T>::type* __restrict__ w,
                       const int64_t* __restrict__ segment,
                       const typename Acc<T>::type* __restrict__ mean_in,
                       const typename Acc<T>::type* __restrict__ rstd,
                       typename Acc<T>::type* __restrict__ partial, int64_t rows, int64_t cols) {
  using A = typename Acc<T>::type;
  __shared__ A sums_d[kSumRows][33];
  __shared__ A sums_dh[kSumRows][33];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const int64_t s = blockIdx.y;
  const int k = blockIdx.z;
  const int64_t lo = first_row_of(segment, rows, s);
  const int64_t n = first_row_of(segment, rows, s + 1) - lo;
  const int64_t begin = lo + n * k / kSplits;
  const int64_t end = lo + n * (k + 1) / kSplits;
  A sum_d = 0, sum_dh = 0;
  if (c < cols) {
    for (int64_t r = begin + threadIdx.y; r < end; r += kSumRows) {
      const A d = load_acc(dy[r * dy_stride + c]);
      const A mean = kind == NormKind::layer ? mean_in[r] : A(0);
      sum_d += d;
      sum_dh += d * normalised<T>(kind, load_acc(x[r * x_stride + c]), mean, rstd[r], w, c);
    }
  }
  sums_d[threadIdx.y][threadIdx.x] = sum_d;
  sums_dh[threadIdx.y][threadIdx.x] = sum_dh;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    A total_d = 0, total_dh = 0;
    for (int y = 0; y < kSumRows; ++y) {
      total_d += sums_d[y][threadIdx.x];
      total_dh += sums_dh[y][threadIdx.x];
    }
    A* out = partial + ((s * kSplits + k) * 2) * cols;
    out[c] = total_d;
    out[cols + c] = total_dh;
  }
}

// first[s, c] (and second[s, c] when kOuts is 2) = the kSplits parts of partial[s, k, kOuts, c]
// added in order.
template <typename A, int kOuts>
__global__ void __launch_bounds__(256)
    sample_parts_kernel(const A* __restrict__ partial, int64_t samples, int64_t cols,
                        A* __restrict__ first, A* __restrict__ second) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= samples * cols) return;
  const int64_t s = i / cols;
  const int64_t c = i - s * cols;
  A total[kOuts] = {};
  for (int k = 0; k < kSplits; ++k) {
    const A* part = partial + ((s * kSplits + k) * kOuts) * cols;
#pragma unroll
    for (int o = 0; o < kOuts; ++o) total[o] += part[o * cols + c];
  }
  first[i] = total[0];
  if (kOuts == 2) second[i] = total[kOuts - 1];
}

template <typename A, int kOuts>
const char* launch_sample_parts(const A* partial, int64_t samples, int64_t cols, A* first,
                                A* second, cudaStream_t stream) {
  const int64_t total = samples * cols;
  sample_parts_kernel<A, kOuts><<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(
      partial, samples, cols, first, second);
  return launch_error();
}

template <typename T, int N>
__global__ void __launch_bounds__(kRowThreads)
    gated_forward_kernel(const T* __restrict__ x, int64_t x_stride, const T* __restrict__ out,
                         int64_t out_stride, T* __restrict__ y, int64_t y_stride,
                         const typename Acc<T>::type* __restrict__ gate, int64_t gate_stride,
                         const int64_t* __restrict__ segment, int64_t rows, int64_t cols) {
  using A = typename Acc<T>::type;
  using V = Vec<T, N>;
  const int lane = threadIdx.x & 31;
  for (int64_t r = first_warp_row(); r < rows; r += warp_row_step()) {
    const A* g = gate + segment[r] * gate_stride;
    for (int64_t c = lane * N; c < cols; c += 32 * N) {
      const V xv = *reinterpret_cast<const V*>(x + r * x_stride + c);
      const V ov = *reinterpret_cast<const V*>(out + r * out_stride + c);
      V yv;
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const A gated = load_acc(store_as<T>(g[c + i] * load_acc(ov.v[i])));
        yv.v[i] = store_as<T>(load_acc(xv.v[i]) + gated);
      }
      *reinterpret_cast<V*>(y + r * y_stride + c) = yv;
    }
  }
}

template <typename T, int N>
__global__ void __launch_bounds__(kRowThreads)
    gated_dout_kernel(const T* __restrict__ dy, int64_t dy_stride, T* __restrict__ dout,
                      int64_t dout_stride, const typename Acc<T>::type* __restrict__ gate,
                      int64_t gate_stride, const int64_t* __restrict__ segment, int64_t rows,
                      int64_t cols) {
  using V = Vec<T, N>;
  const int lane = threadIdx.x & 31;
  for (int64_t r = first_warp_row(); r < rows; r += warp_row_step()) {
    const typename Acc<T>::type* g = gate + segment[r] * gate_stride;
    for (int64_t c = lane * N; c < cols; c += 32 * N) {
      const V dv = *reinterpret_cast<const V*>(dy + r * dy_stride + c);
      V ov;
#pragma unroll
      for (int i = 0; i < N; ++i) ov.v[i] = store_as<T>(load_acc(dv.v[i]) * g[c + i]);
      *reinterpret_cast<V*>(dout + r * dout_stride + c) = ov;
    }
  }
}

// partial[s, k, c] = sum of dy * out over part k of sample s's rows (as sample_sums_kernel).
template <typename T>
__global__ void __launch_bounds__(32 * kSumRows)
    gate_sums_kernel(const T* __restrict__ dy, int64_t dy_stride, const T* __restrict__ out,
                     int64_t out_stride, const int64_t* __restrict__ segment,
                     typename Acc<T>::type* __restrict__ partial, int64_t rows, int64_t cols) {
  using A = typename Acc<T>::type;
  __shared__ A sums[kSumRows][33];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const int64_t s = blockIdx.y;
  const int k = blockIdx.z;
  const int64_t lo = first_row_of(segment, rows, s);
  const int64_t n = first_row_of(segment, rows, s + 1) - lo;
  const int64_t begin = lo + n * k / kSplits;
  const int64_t end = lo + n * (k + 1) / kSplits;
  A total = 0;
  if (c < cols) {
    for (int64_t r = begin + threadIdx.y; r < end; r += kSumRows)
      total += load_acc(dy[r * dy_stride + c]) * load_acc(out[r * out_stride + c]);
  }
  sums[threadIdx.y][threadIdx.x] = total;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    A column = 0;
    for (int y = 0; y < kSumRows; ++y) column += sums[y][threadIdx.x];
    partial[(s * kSplits + k) * cols + c] = column;
  }
}

template <typename T>
const char* forward(const ModulatedNormForward& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  constexpr int N = kVec16<T>;
  const bool vectors = vector_ok(a.x, a.x_stride, a.cols, sizeof(T), N) &&
                       vector_ok(a.y, a.y_stride, a.cols, sizeof(T), N);
  auto launch = [&](auto kernel) {
    kernel<<<grid_for_rows(kernel, a.rows, 0), kRowThreads, 0, stream>>>(
        a.kind, static_cast<const T*>(a.x), a.x_stride, static_cast<T*>(a.y), a.y_stride,
        static_cast<const A*>(a.weight), static_cast<const A*>(a.shift), a.shift_stride,
        static_cast<const A*>(a.scale), a.scale_stride, a.segment, static_cast<A*>(a.mean),
        static_cast<A*>(a.rstd), a.rows, a.cols, static_cast<A>(a.eps));
  };
  if (vectors) {
    launch(modulated_forward_kernel<T, N>);
  } else {
    launch(modulated_forward_kernel<T, 1>);
  }
  return launch_error();
}

// How the backward runs: the same answer for the workspace size and for the launch. The
// workspace holds the gain's per-block partial rows (when asked for), then the samples' parts.
struct BackwardPlan {
  bool vectors;
  int blocks;
  size_t shared;
  int64_t dw_elements;
  int64_t sample_elements;
  const char* error;
};

template <typename T, int N>
BackwardPlan plan_backward_as(const ModulatedNormBackward& a, bool vectors) {
  using A = typename Acc<T>::type;
  auto kernel = modulated_input_grad_kernel<T, N>;
  const size_t shared = a.dweight != nullptr ? kRowWarps * dw_slots<N>(a.cols) * sizeof(A) : 0;
  const int64_t sample_elements = a.samples * kSplits * 2 * a.cols;
  if (const char* error = allow_shared(kernel, shared)) {
    return {vectors, 0, shared, 0, sample_elements, error};
  }
  const int blocks = grid_for_rows(kernel, a.rows, shared);
  return {vectors, blocks, shared, a.dweight != nullptr ? blocks * a.cols : 0, sample_elements,
          nullptr};
}

template <typename T>
BackwardPlan plan_backward(const ModulatedNormBackward& a) {
  constexpr int N = kVec16<T>;
  const bool vectors = vector_ok(a.dy, a.dy_stride, a.cols, sizeof(T), N) &&
                       vector_ok(a.x, a.x_stride, a.cols, sizeof(T), N) &&
                       vector_ok(a.dx, a.dx_stride, a.cols, sizeof(T), N);
  return vectors ? plan_backward_as<T, N>(a, true) : plan_backward_as<T, 1>(a, false);
}

template <typename T>
int64_t workspace_bytes(const ModulatedNormBackward& a) {
  using A = typename Acc<T>::type;
  const BackwardPlan plan = plan_backward<T>(a);
  return (plan.dw_elements + plan.sample_elements) * static_cast<int64_t>(sizeof(A));
}

template <typename T>
const char* backward(const ModulatedNormBackward& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  constexpr int N = kVec16<T>;
  const BackwardPlan plan = plan_backward<T>(a);
  if (plan.error != nullptr) return plan.error;
  if (a.samples > kMaxSamples) return "more than 65535 samples in one pack";
  A* dw_partial = a.dweight != nullptr ? static_cast<A*>(a.workspace) : nullptr;
  A* sample_partial = static_cast<A*>(a.workspace) + plan.dw_elements;
  auto launch = [&](auto kernel) {
    kernel<<<plan.blocks, kRowThreads, plan.shared, stream>>>(
        a.kind, static_cast<const T*>(a.dy), a.dy_stride, static_cast<const T*>(a.x), a.x_stride,
        static_cast<T*>(a.dx), a.dx_stride, static_cast<const A*>(a.weight),
        static_cast<const A*>(a.scale), a.scale_stride, a.segment,
        static_cast<const A*>(a.mean), static_cast<const A*>(a.rstd), dw_partial, a.rows, a.cols);
  };
  if (plan.vectors) {
    launch(modulated_input_grad_kernel<T, N>);
  } else {
    launch(modulated_input_grad_kernel<T, 1>);
  }
  if (const char* error = launch_error()) return error;
  if (a.dweight != nullptr) {
    if (const char* error = launch_column_sum(static_cast<const A*>(dw_partial), plan.blocks,
                                              a.cols, static_cast<A*>(a.dweight), stream)) {
      return error;
    }
  }
  if (a.samples == 0) return nullptr;
  const dim3 grid(static_cast<unsigned>((a.cols + 31) / 32), static_cast<unsigned>(a.samples),
                  kSplits);
  sample_sums_kernel<T><<<grid, dim3(32, kSumRows), 0, stream>>>(
      a.kind, static_cast<const T*>(a.dy), a.dy_stride, static_cast<const T*>(a.x), a.x_stride,
      static_cast<const A*>(a.weight), a.segment, static_cast<const A*>(a.mean),
      static_cast<const A*>(a.rstd), sample_partial, a.rows, a.cols);
  if (const char* error = launch_error()) return error;
  return launch_sample_parts<A, 2>(sample_partial, a.samples, a.cols, static_cast<A*>(a.dshift),
                                   static_cast<A*>(a.dscale), stream);
}

template <typename T>
const char* gated_forward(const GatedResidualForward& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  constexpr int N = kVec16<T>;
  const bool vectors = vector_ok(a.x, a.x_stride, a.cols, sizeof(T), N) &&
                       vector_ok(a.out, a.out_stride, a.cols, sizeof(T), N) &&
                       vector_ok(a.y, a.y_stride, a.cols, sizeof(T), N);
  auto launch = [&](auto kernel) {
    kernel<<<grid_for_rows(kernel, a.rows, 0), kRowThreads, 0, stream>>>(
        static_cast<const T*>(a.x), a.x_stride, static_cast<const T*>(a.out), a.out_stride,
        static_cast<T*>(a.y), a.y_stride, static_cast<const A*>(a.gate), a.gate_stride,
        a.segment, a.rows, a.cols);
  };
  if (vectors) {
    launch(gated_forward_kernel<T, N>);
  } else {
    launch(gated_forward_kernel<T, 1>);
  }
  return launch_error();
}

template <typename T>
int64_t gated_workspace_bytes(const GatedResidualBackward& a) {
  return a.samples * kSplits * a.cols * static_cast<int64_t>(sizeof(typename Acc<T>::type));
}

template <typename T>
const char* gated_backward(const GatedResidualBackward& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  constexpr int N = kVec16<T>;
  if (a.samples > kMaxSamples) return "more than 65535 samples in one pack";
  const bool vectors = vector_ok(a.dy, a.dy_stride, a.cols, sizeof(T), N) &&
                       vector_ok(a.dout, a.dout_stride, a.cols, sizeof(T), N);
  auto launch = [&](auto kernel) {
    kernel<<<grid_for_rows(kernel, a.rows, 0), kRowThreads, 0, stream>>>(
        static_cast<const T*>(a.dy), a.dy_stride, static_cast<T*>(a.dout), a.dout_stride,
        static_cast<const A*>(a.gate), a.gate_stride, a.segment, a.rows, a.cols);
  };
  if (vectors) {
    launch(gated_dout_kernel<T, N>);
  } else {
    launch(gated_dout_kernel<T, 1>);
  }
  if (const char* error = launch_error()) return error;
  if (a.samples == 0) return nullptr;
  A* partial = static_cast<A*>(a.workspace);
  const dim3 grid(static_cast<unsigned>((a.cols + 31) / 32), static_cast<unsigned>(a.samples),
                  kSplits);
  gate_sums_kernel<T><<<grid, dim3(32, kSumRows), 0, stream>>>(
      static_cast<const T*>(a.dy), a.dy_stride, static_cast<const T*>(a.out), a.out_stride,
      a.segment, partial, a.rows, a.cols);
  if (const char* error = launch_error()) return error;
  return launch_sample_parts<A, 1>(partial, a.samples, a.cols, static_cast<A*>(a.dgate), nullptr,
                                   stream);
}

}  // namespace
}  // namespace cuda

const char* gated_residual_forward_cuda(const GatedResidualForward& args, void* stream) {
  return cuda::with_storage_type(args.dtype, [&](auto type) {
    return cuda::gated_forward<decltype(type)>(args, static_cast<cudaStream_t>(stream));
  });
}

int64_t gated_residual_backward_workspace_cuda(const GatedResidualBackward& args) {
  int64_t bytes = -1;
  cuda::with_storage_type(args.dtype, [&](auto type) -> const char* {
    bytes = cuda::gated_workspace_bytes<decltype(type)>(args);
    return nullptr;
  });
  return bytes;
}

const char* gated_residual_backward_cuda(const GatedResidualBackward& args, void* stream) {
  return cuda::with_storage_type(args.dtype, [&](auto type) {
    return cuda::gated_backward<decltype(type)>(args, static_cast<cudaStream_t>(stream));
  });
}

const char* modulated_norm_forward_cuda(const ModulatedNormForward& args, void* stream) {
  return cuda::with_storage_type(args.dtype, [&](auto type) {
    return cuda::forward<decltype(type)>(args, static_cast<cudaStream_t>(stream));
  });
}

// Sized by the plan of the kernels that will run (see rms_norm_backward_workspace_cuda).
int64_t modulated_norm_backward_workspace_cuda(const ModulatedNormBackward& args) {
  int64_t bytes = -1;
  cuda::with_storage_type(args.dtype, [&](auto type) -> const char* {
    bytes = cuda::workspace_bytes<decltype(type)>(args);
    return nullptr;
  });
  return bytes;
}

const char* modulated_norm_backward_cuda(const ModulatedNormBackward& args, void* stream) {
  return cuda::with_storage_type(args.dtype, [&](auto type) {
    return cuda::backward<decltype(type)>(args, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace kernels
}  // namespace megagoku
