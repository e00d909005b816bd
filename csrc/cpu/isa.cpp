// Which compiled copy of the row bodies runs: the widest ISA this CPU has, unless
// MEGAGOKU_CPU_ISA or set_cpu_isa names another.
#include "isa.h"

#include <atomic>
#include <cstdlib>
#include <initializer_list>
#include <cstring>

namespace megagoku {
namespace kernels {
namespace {

const CpuRowKernels* lookup(const char* name, const char** why) {
  if (std::strcmp(name, "generic") == 0) return &kRowsGeneric;
#if defined(MEGAGOKU_X86_CLONES)
  __builtin_cpu_init();
  if (std::strcmp(name, "avx2") == 0) {
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &kRowsAvx2;
    *why = "this CPU has no AVX2/FMA";
    return nullptr;
  }
  if (std::strcmp(name, "avx512") == 0) {
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      return &kRowsAvx512;
    *why = "this CPU has no AVX-512 (F, BW, VL, DQ)";
    return nullptr;
  }
  *why = "unknown ISA (generic, avx2, avx512)";
#else
  *why = "this build has only the generic ISA";
#endif
  return nullptr;
}

const CpuRowKernels* best() {
  const char* why = nullptr;
  const char* forced = std::getenv("MEGAGOKU_CPU_ISA");
  if (forced != nullptr && *forced != '\0') {
    if (const CpuRowKernels* k = lookup(forced, &why)) return k;
  }
  for (const char* name : {"avx512", "avx2"}) {
    if (const CpuRowKernels* k = lookup(name, &why)) return k;
  }
  return &kRowsGeneric;
}

std::atomic<const CpuRowKernels*> selected{nullptr};

}  // namespace

const CpuRowKernels& cpu_row_kernels() {
  const CpuRowKernels* k = selected.load(std::memory_order_acquire);
  if (k == nullptr) {
    k = best();
    selected.store(k, std::memory_order_release);
  }
  return *k;
}

const char* set_cpu_isa(const char* name) {
  const char* why = nullptr;
  const CpuRowKernels* k = lookup(name, &why);
  if (k == nullptr) return why;
  selected.store(k, std::memory_order_release);
  return nullptr;
}

}  // namespace kernels
}  // namespace megagoku
