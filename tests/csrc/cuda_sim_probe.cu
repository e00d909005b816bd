// Kernels with the bugs cuda_sim exists to catch, and a correct one of each kind beside them
// (tests/csrc/test_cuda_sim.py): compiled for cuda_sim only, through plain C entry points.
#include <cuda_runtime.h>

namespace {

// Lanes >= `active` leave before the warp's full-mask shuffles (the sub-warp-rows bug).
__global__ void warp_sum_kernel(const float* in, float* out, int active, int width) {
  const int lane = threadIdx.x & 31;
  if (lane >= active) return;
  float v = in[threadIdx.x];
  for (int offset = width / 2; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, offset, width);
  }
  out[threadIdx.x] = v;
}

// Each thread writes its slot, then reads its neighbour's: without the barrier, a race.
__global__ void neighbour_kernel(float* out, bool barrier) {
  extern __shared__ unsigned char shared_bytes[];
  float* slots = reinterpret_cast<float*>(shared_bytes);
  slots[threadIdx.x] = static_cast<float>(threadIdx.x);
  if (barrier) __syncthreads();
  out[threadIdx.x] = slots[(threadIdx.x + 1) % blockDim.x];
}

__global__ void touch_shared_kernel(int bytes) {
  extern __shared__ unsigned char shared_bytes[];
  if (threadIdx.x == 0) shared_bytes[bytes] = 1;  // bytes: the size asked for, so one past it
}

int status(char* message, int length) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess && message != nullptr && length > 0) {
    const char* m = cudaGetErrorString(e);
    int i = 0;
    for (; i + 1 < length && m[i] != 0; ++i) message[i] = m[i];
    message[i] = 0;
  }
  return static_cast<int>(e);
}

}  // namespace

extern "C" {

int probe_warp_sum(const float* in, float* out, int threads, int active, int width, char* message,
                   int length) {
  warp_sum_kernel<<<1, threads>>>(in, out, active, width);
  return status(message, length);
}

int probe_neighbour(float* out, int threads, int barrier, char* message, int length) {
  neighbour_kernel<<<1, threads, threads * sizeof(float)>>>(out, barrier != 0);
  return status(message, length);
}

int probe_shared(int bytes, int opt_in, int touch_past_end, char* message, int length) {
  if (opt_in) {
    cudaFuncSetAttribute(touch_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  }
  touch_shared_kernel<<<1, 32, static_cast<size_t>(bytes)>>>(touch_past_end ? bytes : 0);
  return status(message, length);
}

}  // extern "C"
