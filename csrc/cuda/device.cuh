// Device helpers shared by the CUDA kernels: storage <-> accumulator conversion for the CUDA
// half types, 16-byte vectors, warp sums, and the alignment test that picks the vector width.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../kernels/api.h"
#include "../kernels/math.h"

namespace megagoku {
namespace kernels {
namespace cuda {

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

__device__ __forceinline__ float load_acc(float v) { return v; }
__device__ __forceinline__ double load_acc(double v) { return v; }
__device__ __forceinline__ float load_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float load_acc(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T store_as(typename Acc<T>::type v);
template <>
__device__ __forceinline__ float store_as<float>(float v) { return v; }
template <>
__device__ __forceinline__ double store_as<double>(double v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 store_as<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half store_as<__half>(float v) { return __float2half_rn(v); }

// N elements moved as one 16-byte (or narrower, for N = 1) load or store.
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T>
constexpr int kVec16 = 16 / sizeof(T);

// The sum over each group of kLanes consecutive lanes (the whole warp by default), in every lane
// of the group. All 32 lanes must call it (full mask), also those whose group has no row.
template <int kLanes = 32, typename A>
__device__ __forceinline__ A warp_sum(A v) {
  static_assert(kLanes >= 1 && kLanes <= 32 && (kLanes & (kLanes - 1)) == 0, "lanes: 2^k <= 32");
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, offset, kLanes);
  }
  return v;
}

// Whether every access of a row-strided matrix can use N-element vectors: the base pointer is
// aligned to the vector and both the row length and the row stride are multiples of N.
__host__ inline bool vector_ok(const void* p, int64_t stride, int64_t cols, int bytes, int n) {
  return reinterpret_cast<uintptr_t>(p) % (static_cast<uintptr_t>(bytes) * n) == 0 &&
         stride % n == 0 && cols % n == 0;
}

__host__ inline int sm_count() {
  int device = 0, count = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
  return count > 0 ? count : 1;
}

// Calls f(T{}) with T the CUDA storage type of `dtype`: the one switch from DType to the types
// the kernel templates take.
template <typename F>
__host__ const char* with_storage_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
    case DType::bf16: return f(__nv_bfloat16{});
    case DType::f16: return f(__half{});
  }
  return "unknown dtype";
}

__host__ inline const char* launch_error() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace cuda
}  // namespace kernels
}  // namespace megagoku
