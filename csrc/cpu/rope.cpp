// 3D RoPE on the CPU: OpenMP over tokens; the token bodies (cpu/rows.h) come from the ISA chosen
// in cpu/isa.cpp.
#include <omp.h>

#include "../kernels/api.h"
#include "isa.h"

namespace megagoku {
namespace kernels {

void rope_3d_cpu(const Rope3d& a, int threads) {
  // f16 never gets here: the binding refuses it on the CPU.
  const auto body = cpu_row_kernels().rope[static_cast<int>(a.dtype)];
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const int n = omp_get_num_threads();
    body(a, a.tokens * t / n, a.tokens * (t + 1) / n);
  }
}

}  // namespace kernels
}  // namespace megagoku
