// 3D RoPE on CUDA: one block per token (grid-stride). The block computes the token's cos/sin
// table (head_dim / 2 pairs) into shared memory once, then its threads rotate all heads with
// 16-byte vector loads and stores. In place when out == x.
#include "device.cuh"

namespace megagoku {
namespace kernels {
namespace cuda {
namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ void sin_cos(float a, float* s, float* c) { sincosf(a, s, c); }
__device__ __forceinline__ void sin_cos(double a, double* s, double* c) { sincos(a, s, c); }

// N consecutive elements (N even: N / 2 pairs), as one vector when `kAligned`.
template <typename T, int N, bool kAligned>
struct Chunk {
  T v[N];
  __device__ __forceinline__ void load(const T* p) {
    if constexpr (kAligned) {
      const Vec<T, N> vec = *reinterpret_cast<const Vec<T, N>*>(p);
#pragma unroll
      for (int i = 0; i < N; ++i) v[i] = vec.v[i];
    } else {
#pragma unroll
      for (int i = 0; i < N; ++i) v[i] = p[i];
    }
  }
  __device__ __forceinline__ void store(T* p) const {
    if constexpr (kAligned) {
      Vec<T, N> vec;
#pragma unroll
      for (int i = 0; i < N; ++i) vec.v[i] = v[i];
      *reinterpret_cast<Vec<T, N>*>(p) = vec;
    } else {
#pragma unroll
      for (int i = 0; i < N; ++i) p[i] = v[i];
    }
  }
};

template <typename T, int N, bool kAligned>
__global__ void __launch_bounds__(kThreads)
    rope_3d_kernel(const T* x, int64_t x_token_stride, int64_t x_head_stride, T* out,
                   int64_t out_token_stride, int64_t out_head_stride,
                   const int64_t* __restrict__ positions, const double* __restrict__ inv_freq,
                   int64_t tokens, int64_t heads, int head_dim, int pairs_t, int pairs_h,
                   bool inverse) {
  using A = typename Acc<T>::type;
  __shared__ A cos_table[kMaxRopeHeadDim / 2];
  __shared__ A sin_table[kMaxRopeHeadDim / 2];
  const int pairs = head_dim / 2;
  const int chunks = head_dim / N;
  const int work = static_cast<int>(heads) * chunks;  // 32-bit: heads x head_dim / N is small
  for (int64_t l = blockIdx.x; l < tokens; l += gridDim.x) {
    for (int j = threadIdx.x; j < pairs; j += blockDim.x) {
      const A angle = rope_angle<A>(positions[3 * l + rope_axis(j, pairs_t, pairs_h)], inv_freq[j]);
      A s, c;
      sin_cos(angle, &s, &c);
      cos_table[j] = c;
      sin_table[j] = inverse ? -s : s;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < work; i += blockDim.x) {
      const int h = i / chunks;
      const int k = (i % chunks) * N;
      Chunk<T, N, kAligned> chunk;
      chunk.load(x + l * x_token_stride + h * x_head_stride + k);
#pragma unroll
      for (int p = 0; p < N / 2; ++p) {
        const int j = k / 2 + p;
        A y0, y1;
        rotate_pair(load_acc(chunk.v[2 * p]), load_acc(chunk.v[2 * p + 1]), cos_table[j],
                    sin_table[j], y0, y1);
        chunk.v[2 * p] = store_as<T>(y0);
        chunk.v[2 * p + 1] = store_as<T>(y1);
      }
      chunk.store(out + l * out_token_stride + h * out_head_stride + k);
    }
    __syncthreads();  // the next token overwrites the table
  }
}

template <typename T, int N, bool kAligned>
void launch(const Rope3d& a, cudaStream_t stream) {
  // One block per token, up to what is resident at once; the rest grid-stride.
  auto kernel = rope_3d_kernel<T, N, kAligned>;
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0) != cudaSuccess ||
      per_sm < 1) {
    per_sm = 1;
  }
  const int64_t resident = static_cast<int64_t>(sm_count()) * per_sm;
  const int blocks = static_cast<int>(a.tokens < resident ? a.tokens : resident);
  kernel<<<blocks, kThreads, 0, stream>>>(
      static_cast<const T*>(a.x), a.x_token_stride, a.x_head_stride, static_cast<T*>(a.out),
      a.out_token_stride, a.out_head_stride, a.positions, a.inv_freq, a.tokens, a.heads,
      static_cast<int>(a.head_dim), a.pairs_t, a.pairs_h, a.inverse);
}

template <typename T>
const char* rotate(const Rope3d& a, cudaStream_t stream) {
  constexpr int N = kVec16<T> >= 2 ? kVec16<T> : 2;
  // A head is a row of head_dim elements; token and head strides must both keep the alignment.
  const bool vectors = vector_ok(a.x, a.x_token_stride, a.head_dim, sizeof(T), N) &&
                       a.x_head_stride % N == 0 &&
                       vector_ok(a.out, a.out_token_stride, a.head_dim, sizeof(T), N) &&
                       a.out_head_stride % N == 0;
  if (vectors) {
    launch<T, N, true>(a, stream);
  } else {
    launch<T, 2, false>(a, stream);
  }
  return launch_error();
}

}  // namespace
}  // namespace cuda

const char* rope_3d_cuda(const Rope3d& args, void* stream) {
  return cuda::with_storage_type(args.dtype, [&](auto type) {
    return cuda::rotate<decltype(type)>(args, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace kernels
}  // namespace megagoku
