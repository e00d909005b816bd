// The CPU kernels' row bodies, compiled once per instruction set, and the choice among them.
//
// Built from source on the machine that installs it, the extension must still run on another
// CPU (a login node builds, compute nodes run): so no -march=native. The row bodies are compiled
// for the baseline ISA, AVX2+FMA and AVX-512 (x86-64 with GCC), and the best one the CPU supports
// is chosen at run time. MEGAGOKU_CPU_ISA=generic|avx2|avx512 (or set_cpu_isa) forces one.
#pragma once

#include <cstdint>

#include "../kernels/api.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MEGAGOKU_X86_CLONES 1
#endif

namespace megagoku {
namespace kernels {

// CPU kernel outputs at least this large are written with non-temporal stores (cpu/store.h):
// beyond any L2 and most L3 slices, so the next op would read them from DRAM anyway.
constexpr int64_t kStreamOutputBytes = 4 << 20;

// Tables indexed by DType: f32, f64, bf16 (the CPU has no f16 path).
struct CpuRowKernels {
  const char* isa;
  void (*rms_norm_forward[3])(const RmsNormForward&, int64_t begin, int64_t end);
  void (*rms_norm_backward[3])(const RmsNormBackward&, int64_t begin, int64_t end, void* dw);
  void (*whole_width_forward[3])(const WholeWidthRmsNormForward&, int64_t begin, int64_t end);
  void (*whole_width_backward[3])(const WholeWidthRmsNormBackward&, int64_t begin, int64_t end,
                                  void* dw);
  void (*whole_width_partial[3])(const WholeWidthPartialSums&, int64_t begin, int64_t end);
  void (*modulated_forward[3])(const ModulatedNormForward&, int64_t begin, int64_t end);
  // `dmod`: Acc[(segment[end - 1] - segment[begin] + 1) * 2 * cols], this range's samples'
  // (dshift, dscale) rows; `dw`: Acc[cols] or nullptr. Both summed into.
  void (*modulated_backward[3])(const ModulatedNormBackward&, int64_t begin, int64_t end,
                                void* dmod, void* dw);
  void (*gated_forward[3])(const GatedResidualForward&, int64_t begin, int64_t end);
  // `dgate`: Acc[(segment[end - 1] - segment[begin] + 1) * cols], summed into.
  void (*gated_backward[3])(const GatedResidualBackward&, int64_t begin, int64_t end, void* dgate);
  void (*rope[3])(const Rope3d&, int64_t begin, int64_t end);
};

extern const CpuRowKernels kRowsGeneric;
#if defined(MEGAGOKU_X86_CLONES)
extern const CpuRowKernels kRowsAvx2;
extern const CpuRowKernels kRowsAvx512;
#endif

const CpuRowKernels& cpu_row_kernels();
// Selects the named ISA; returns nullptr on success, else why not (unknown, or unsupported here).
const char* set_cpu_isa(const char* name);

}  // namespace kernels
}  // namespace megagoku
