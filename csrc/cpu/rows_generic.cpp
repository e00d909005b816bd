// The row bodies for the compiler's baseline ISA (SSE2 on x86-64, NEON on aarch64).
#include "rows.h"

namespace megagoku {
namespace kernels {
const CpuRowKernels kRowsGeneric = row_kernel_table("generic");
}  // namespace kernels
}  // namespace megagoku
