// The modulated norm of Goku's released block on the CPU: OpenMP over rows; the row bodies
// (cpu/rows.h) come from the ISA chosen in cpu/isa.cpp.
//
// Backward sums dshift and dscale per sample. The rows are sorted by sample, so the rows of one
// worker's range belong to a run of consecutive samples: each range sums into its own rows for
// those samples only (at most samples + ranges rows in all, however many samples a pack holds),
// and the ranges' rows are added per sample in range order. The ranges are fixed by the thread
// count, not by which OpenMP thread runs them: a given thread count gives the same bits.
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
void backward(const ModulatedNormBackward& a, int threads) {
  const auto body = cpu_row_kernels().modulated_backward[index_of(a.dtype)];
  const int64_t cols = a.cols;
  const int ranges = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, a.rows)));
  std::vector<int64_t> begin(ranges + 1), first(ranges), count(ranges), offset(ranges + 1, 0);
  for (int t = 0; t <= ranges; ++t) begin[t] = a.rows * t / ranges;
  for (int t = 0; t < ranges; ++t) {
    const bool empty = begin[t] == begin[t + 1];
    first[t] = empty ? 0 : a.segment[begin[t]];
    count[t] = empty ? 0 : a.segment[begin[t + 1] - 1] - first[t] + 1;
    offset[t + 1] = offset[t] + count[t] * 2 * cols;
  }
  std::vector<Acc> dmod(static_cast<size_t>(offset[ranges]), Acc(0));
  Acc* dw = static_cast<Acc*>(a.dweight);
  std::vector<Acc> dw_partial(dw != nullptr ? static_cast<size_t>(ranges) * cols : 0, Acc(0));
#pragma omp parallel for num_threads(ranges) schedule(static, 1)
  for (int t = 0; t < ranges; ++t) {
    body(a, begin[t], begin[t + 1], dmod.data() + offset[t],
         dw != nullptr ? dw_partial.data() + static_cast<size_t>(t) * cols : nullptr);
  }
  Acc* dshift = static_cast<Acc*>(a.dshift);
  Acc* dscale = static_cast<Acc*>(a.dscale);
#pragma omp parallel for num_threads(ranges) schedule(static)
  for (int64_t s = 0; s < a.samples; ++s) {
    Acc* shift_row = dshift + s * cols;
    Acc* scale_row = dscale + s * cols;
    for (int64_t c = 0; c < cols; ++c) shift_row[c] = scale_row[c] = Acc(0);
    for (int t = 0; t < ranges; ++t) {
      if (s < first[t] || s >= first[t] + count[t]) continue;
      const Acc* part = dmod.data() + offset[t] + (s - first[t]) * 2 * cols;
      for (int64_t c = 0; c < cols; ++c) {
        shift_row[c] += part[c];
        scale_row[c] += part[cols + c];
      }
    }
  }
  if (dw != nullptr) {
#pragma omp parallel for num_threads(ranges) schedule(static)
    for (int64_t c = 0; c < cols; ++c) {
      Acc total = 0;
      for (int t = 0; t < ranges; ++t) total += dw_partial[static_cast<size_t>(t) * cols + c];
      dw[c] = total;
    }
  }
}

}  // namespace

void modulated_norm_forward_cpu(const ModulatedNormForward& a, int threads) {
  const auto body = cpu_row_kernels().modulated_forward[index_of(a.dtype)];
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const int n = omp_get_num_threads();
    body(a, a.rows * t / n, a.rows * (t + 1) / n);
  }
}

void modulated_norm_backward_cpu(const ModulatedNormBackward& a, int threads) {
  if (a.dtype == DType::f64) return backward<double>(a, threads);
  return backward<float>(a, threads);
}

}  // namespace kernels
}  // namespace megagoku
