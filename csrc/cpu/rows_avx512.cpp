// The row bodies compiled for AVX-512 (F, BW, VL, DQ) with 512-bit vectors (x86-64 with GCC;
// chosen at run time by cpu/isa.cpp).
#include "isa.h"

#if defined(MEGAGOKU_X86_CLONES)
#include <cmath>
#include <cstdint>
#include <cstring>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512")
#define MEGAGOKU_ROWS_AVX512 1
#include "rows.h"

namespace megagoku {
namespace kernels {
const CpuRowKernels kRowsAvx512 = row_kernel_table("avx512");
}  // namespace kernels
}  // namespace megagoku
#pragma GCC pop_options
#endif
