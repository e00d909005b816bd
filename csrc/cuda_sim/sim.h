// A CUDA device simulated on the CPU, for one purpose: to run the real kernels of csrc/cuda/ in
// CI, which has no GPU. Each thread block runs as fibers (one per CUDA thread) on the calling
// thread; a fiber runs until it reaches __syncthreads, a warp shuffle or its end, and the
// scheduler then releases the barrier or performs the shuffle for the whole warp. What a GPU only
// tolerates by luck is an error here: a warp whose lanes do not all reach the same full-mask
// shuffle (the divergent-exit bug of sub-warp rows), dynamic shared memory over 48 KiB without
// the opt-in, a block over 1024 threads. The fibers of a block run in a different order on every
// launch, so an order-dependent race shows up as a run-to-run difference; dynamic shared memory
// (its size rounded up to 16 bytes) ends at a guard page, so reading or writing past it faults.
//
// Not simulated: concurrency within a warp's instruction (a lane sees other lanes' writes only
// at a sync point or when it runs after them), global-memory bounds, timing. The device has 3
// SMs, 2 resident blocks each: small grids, so that grid-stride loops wrap with few rows.
//
// Built only by tests/csrc/cuda_sim.py, with this directory first on the include path, so that
// <cuda_runtime.h>, <cuda_bf16.h> and <cuda_fp16.h> are the shims beside this file.
#pragma once

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // blocks run one at a time: a static is one block's shared array

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace cuda_sim {

constexpr int kSms = 3;
constexpr int kBlocksPerSm = 2;
constexpr size_t kDefaultShared = 48 * 1024;
constexpr size_t kOptinShared = 227 * 1024;
constexpr size_t kStack = 256 * 1024;

struct State {
  cudaError_t error = cudaSuccess;
  std::string message;
  std::map<const void*, size_t> shared_optin;  // kernel -> opted-in dynamic shared bytes
  uint64_t launches = 0;
};
inline State state;

inline void fail(cudaError_t error, const std::string& message) {
  if (state.error == cudaSuccess) {
    state.error = error;
    state.message = message;
  }
}

enum class At { ready, barrier, shuffle, done };

// Switching fibers: on x86-64 a few instructions that save the callee-saved registers and swap
// stacks (glibc's swapcontext also saves the signal mask, a system call per switch: it made the
// simulation several times slower); elsewhere swapcontext.
#if defined(__x86_64__)
extern "C" void cuda_sim_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .weak cuda_sim_switch
  .type cuda_sim_switch, @function
cuda_sim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_sim_switch, .-cuda_sim_switch
)");

struct Context {
  void* sp = nullptr;
};
inline void switch_to(Context* from, Context* to) { cuda_sim_switch(&from->sp, to->sp); }
// A fresh stack that "returns" into entry as if called: six zeroed registers for the pops,
// then entry's address, then a slot that keeps the 16-byte alignment of a call.
inline void start_context(Context* c, void* stack, size_t size, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(stack) + size;
  top &= ~static_cast<uintptr_t>(15);
  auto* sp = reinterpret_cast<uintptr_t*>(top);
  *--sp = 0;
  *--sp = reinterpret_cast<uintptr_t>(entry);
  for (int i = 0; i < 6; ++i) *--sp = 0;
  c->sp = sp;
}
#else
struct Context {
  ucontext_t uc;
};
inline void switch_to(Context* from, Context* to) { swapcontext(&from->uc, &to->uc); }
inline void start_context(Context* c, void* stack, size_t size, void (*entry)()) {
  getcontext(&c->uc);
  c->uc.uc_stack.ss_sp = stack;
  c->uc.uc_stack.ss_size = size;
  c->uc.uc_link = nullptr;
  makecontext(&c->uc, entry, 0);
}
#endif

struct Fiber {
  Context context;
  void* stack = nullptr;
  At at = At::ready;
  dim3 index;
  uint64_t value = 0, result = 0;  // a shuffle's operand and result, as bytes
  unsigned mask = 0;
  int lane_mask = 0, width = 0;
};

struct Block {
  std::vector<Fiber> fibers;  // kept between launches (their stacks); the first `count` are live
  int count = 0;
  Context scheduler;
  int current = 0;
  const std::function<void()>* body = nullptr;
};
inline Block block;

inline void yield(At at) {
  Fiber& f = block.fibers[block.current];
  f.at = at;
  switch_to(&f.context, &block.scheduler);
}

// A fiber's whole life: the kernel body, then back to the scheduler for good.
inline void fiber_main() {
  (*block.body)();
  yield(At::done);
}

// Resolve the sync points the fibers stopped at: every warp whose lanes all wait at a shuffle
// exchanges; when no warp can, a barrier that every live thread has reached is released.
// Returns false when the block is finished or stuck (the error says why).
inline bool release(unsigned block_linear) {
  const int n = block.count;
  bool moved = false;
  for (int w = 0; w * 32 < n; ++w) {
    const int first = w * 32, last = first + 32 < n ? first + 32 : n;
    int waiting = 0;
    for (int i = first; i < last; ++i) waiting += block.fibers[i].at == At::shuffle;
    if (waiting == 0) continue;
    const Fiber& lead = block.fibers[first];
    for (int i = first; i < last; ++i) {
      const Fiber& f = block.fibers[i];
      if (last - first != 32 || f.at != At::shuffle || f.mask != 0xffffffffu ||
          f.lane_mask != lead.lane_mask || f.width != lead.width) {
        fail(cudaErrorLaunchFailure,
             "cuda_sim: block " + std::to_string(block_linear) + " warp " + std::to_string(w) +
                 ": lane " + std::to_string(i - first) +
                 " did not reach the full-mask shuffle its warp waits at (divergent warp)");
        return false;
      }
    }
    const int width = lead.width;
    for (int lane = 0; lane < 32; ++lane) {
      const int segment = lane - lane % width;
      int source = lane ^ lead.lane_mask;
      if (source >= segment + width) source = lane;  // a later group: its own value
      block.fibers[first + lane].result = block.fibers[first + source].value;
    }
    for (int i = first; i < last; ++i) block.fibers[i].at = At::ready;
    moved = true;
  }
  if (moved) return true;
  int live = 0, at_barrier = 0;
  for (int i = 0; i < n; ++i) {
    live += block.fibers[i].at != At::done;
    at_barrier += block.fibers[i].at == At::barrier;
  }
  if (live == 0) return false;
  if (at_barrier == live) {
    for (int i = 0; i < n; ++i) {
      if (block.fibers[i].at == At::barrier) block.fibers[i].at = At::ready;
    }
    return true;
  }
  fail(cudaErrorLaunchFailure, "cuda_sim: block " + std::to_string(block_linear) +
                                   ": threads wait at __syncthreads and at a shuffle at once");
  return false;
}

// Dynamic shared memory ending at an inaccessible page, filled with 0xff bytes (NaN as floats).
struct GuardedShared {
  void* base = nullptr;
  size_t length = 0;
  unsigned char* data = nullptr;
  explicit GuardedShared(size_t bytes) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t rounded = (bytes + 15) / 16 * 16;
    length = (rounded + page - 1) / page * page + page;
    base = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
      std::perror("cuda_sim: mmap");
      std::abort();
    }
    unsigned char* guard = static_cast<unsigned char*>(base) + length - page;
    mprotect(guard, page, PROT_NONE);
    data = guard - rounded;
    std::memset(data, 0xff, rounded);
  }
  ~GuardedShared() { munmap(base, length); }
};
inline unsigned char* dynamic_shared_bytes = nullptr;

inline void run_grid(dim3 grid, dim3 threads, size_t shared, const std::function<void()>& body) {
  const unsigned count = threads.x * threads.y * threads.z;
  if (block.fibers.size() < count) block.fibers.resize(count);
  block.count = static_cast<int>(count);
  for (Fiber& f : block.fibers) {
    if (f.stack == nullptr) f.stack = std::malloc(kStack);
  }
  GuardedShared dynamic(shared);
  dynamic_shared_bytes = dynamic.data;
  block.body = &body;
  gridDim = grid;
  blockDim = threads;
  // A different (seeded) order of the fibers on every launch: see the header comment.
  uint64_t seed = 0x9e3779b97f4a7c15ull * ++state.launches;
  std::vector<int> order(count);
  for (unsigned i = 0; i < count; ++i) order[i] = static_cast<int>(i);
  for (unsigned i = count; i > 1; --i) {
    seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
    std::swap(order[i - 1], order[seed % i]);
  }
  unsigned linear = 0;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx, ++linear) {
        blockIdx = dim3(bx, by, bz);
        for (unsigned i = 0; i < count; ++i) {
          Fiber& f = block.fibers[i];
          f.at = At::ready;
          f.index = dim3(i % threads.x, i / threads.x % threads.y, i / (threads.x * threads.y));
          start_context(&f.context, f.stack, kStack, fiber_main);
        }
        do {
          for (int i : order) {
            if (block.fibers[i].at != At::ready) continue;
            block.current = i;
            threadIdx = block.fibers[i].index;
            switch_to(&block.scheduler, &block.fibers[i].context);
          }
        } while (release(linear));
        if (state.error != cudaSuccess) return;  // a stuck block: abandon the launch
      }
}

template <typename... Params>
struct Launch {
  void (*kernel)(Params...);
  dim3 grid, threads;
  size_t shared;

  template <typename... Args>
  void operator()(Args&&... args) const {
    const unsigned count = threads.x * threads.y * threads.z;
    if (count == 0 || count > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
      fail(cudaErrorInvalidConfiguration, "invalid configuration argument");
      return;
    }
    const auto opted = state.shared_optin.find(reinterpret_cast<const void*>(kernel));
    const size_t limit = opted != state.shared_optin.end() ? opted->second : kDefaultShared;
    if (shared > limit) {
      fail(cudaErrorInvalidValue, "invalid argument (dynamic shared memory over the limit)");
      return;
    }
    auto k = kernel;
    const std::function<void()> body = [k, args...]() { k(args...); };
    run_grid(grid, threads, shared, body);
  }
};

// `kernel<<<grid, threads, shared, stream>>>(args)` is rewritten to
// `::cuda_sim::launch(kernel, grid, threads, shared, stream)(args)` (tests/csrc/cuda_sim.py).
template <typename... Params>
Launch<Params...> launch(void (*kernel)(Params...), dim3 grid, dim3 threads, size_t shared = 0,
                         cudaStream_t = nullptr) {
  return Launch<Params...>{kernel, grid, threads, shared};
}

inline unsigned char* dynamic_shared() { return dynamic_shared_bytes; }

}  // namespace cuda_sim

inline void __syncthreads() { cuda_sim::yield(cuda_sim::At::barrier); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "cuda_sim shuffles values of up to 8 bytes");
  cuda_sim::Fiber& f = cuda_sim::block.fibers[cuda_sim::block.current];
  std::memcpy(&f.value, &value, sizeof(T));
  f.mask = mask;
  f.lane_mask = lane_mask;
  f.width = width;
  cuda_sim::yield(cuda_sim::At::shuffle);
  T out;
  std::memcpy(&out, &cuda_sim::block.fibers[cuda_sim::block.current].result, sizeof(T));
  return out;
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = cuda_sim::state.error;
  cuda_sim::state.error = cudaSuccess;
  return e;
}
inline const char* cudaGetErrorString(cudaError_t) { return cuda_sim::state.message.c_str(); }
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = cuda_sim::kSms; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = static_cast<int>(cuda_sim::kOptinShared);
      return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
template <typename Kernel>
inline cudaError_t cudaFuncSetAttribute(Kernel kernel, cudaFuncAttribute, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > cuda_sim::kOptinShared) {
    return cudaErrorInvalidValue;
  }
  cuda_sim::state.shared_optin[reinterpret_cast<const void*>(kernel)] = static_cast<size_t>(bytes);
  return cudaSuccess;
}
template <typename Kernel>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int threads,
                                                                 size_t) {
  *blocks = threads > 0 && threads <= 1024 ? cuda_sim::kBlocksPerSm : 0;
  return cudaSuccess;
}
