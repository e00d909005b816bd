// Goku's whole-width Q/K RMSNorm on the CPU: OpenMP over rows (tokens); the row bodies
// (cpu/rows.h) come from the ISA chosen in cpu/isa.cpp. The gain's gradient is summed per thread,
// then in a fixed order, as the per-row norm's (cpu/rms_norm.cpp).
#include <omp.h>

#include <algorithm>
#include <vector>

#include "../kernels/api.h"
#include "isa.h"

namespace megagoku {
namespace kernels {
namespace {

int index_of(DType dtype) { return static_cast<int>(dtype); }  // f32, f64, bf16: 0, 1, 2

template <typename Acc>
void backward(const WholeWidthRmsNormBackward& a, int threads) {
  const auto body = cpu_row_kernels().whole_width_backward[index_of(a.dtype)];
  Acc* dw = static_cast<Acc*>(a.dweight);
  const int64_t cols = a.groups * a.cols;
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, a.rows)));
  std::vector<Acc> partial(dw != nullptr ? static_cast<size_t>(threads) * cols : 0, Acc(0));
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const int n = omp_get_num_threads();
    body(a, a.rows * t / n, a.rows * (t + 1) / n,
         dw != nullptr ? partial.data() + static_cast<size_t>(t) * cols : nullptr);
  }
  if (dw != nullptr) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t c = 0; c < cols; ++c) {
      Acc total = 0;
      for (int t = 0; t < threads; ++t) total += partial[static_cast<size_t>(t) * cols + c];
      dw[c] = total;
    }
  }
}

}  // namespace

void whole_width_rms_norm_forward_cpu(const WholeWidthRmsNormForward& a, int threads) {
  const auto body = cpu_row_kernels().whole_width_forward[index_of(a.dtype)];
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const int n = omp_get_num_threads();
    body(a, a.rows * t / n, a.rows * (t + 1) / n);
  }
}

void whole_width_rms_norm_backward_cpu(const WholeWidthRmsNormBackward& a, int threads) {
  if (a.dtype == DType::f64) return backward<double>(a, threads);
  return backward<float>(a, threads);
}

void whole_width_partial_sums_cpu(const WholeWidthPartialSums& a, int threads) {
  const auto body = cpu_row_kernels().whole_width_partial[index_of(a.dtype)];
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const int n = omp_get_num_threads();
    body(a, a.rows * t / n, a.rows * (t + 1) / n);
  }
}

}  // namespace kernels
}  // namespace megagoku
