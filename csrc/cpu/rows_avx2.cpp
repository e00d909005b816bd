// The row bodies compiled for AVX2 + FMA (x86-64 with GCC; chosen at run time by cpu/isa.cpp).
#include "isa.h"

#if defined(MEGAGOKU_X86_CLONES)
#include <cmath>
#include <cstdint>
#include <cstring>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define MEGAGOKU_ROWS_AVX2 1
#include "rows.h"

namespace megagoku {
namespace kernels {
const CpuRowKernels kRowsAvx2 = row_kernel_table("avx2");
}  // namespace kernels
}  // namespace megagoku
#pragma GCC pop_options
#endif
