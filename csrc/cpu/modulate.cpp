// The modulated norm and gated residual of Goku's released block on the CPU: OpenMP over rows;
// the row bodies (cpu/rows.h) come from the ISA chosen in cpu/isa.cpp.
//
// Their backward passes sum per sample (dshift and dscale, dgate). The rows are sorted by
// sample, so the rows of one worker's range belong to a run of consecutive samples: each range
// sums into its own rows for those samples only (at most samples + ranges rows in all, however
// many samples a pack holds), and the ranges' rows are added per sample in range order. The
// ranges are fixed by the thread count, not by which OpenMP thread runs them: a given thread
// count gives the same bits.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "../kernels/api.h"
#include "isa.h"

namespace megagoku {
namespace kernels {
namespace {

int index_of(DType dtype) { return static_cast<int>(dtype); }  // f32, f64, bf16: 0, 1, 2

// The row ranges of a per-sample sum, each range's first sample, how many samples it touches,
// and where its partial rows (`width` wide) start.
struct SampleRanges {
  int count;
  std::vector<int64_t> begin, first, samples, offset;

  SampleRanges(const int64_t* segment, int64_t rows, int threads, int64_t width)
      : count(static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, rows)))),
        begin(count + 1), first(count), samples(count), offset(count + 1, 0) {
    for (int t = 0; t <= count; ++t) begin[t] = rows * t / count;
    for (int t = 0; t < count; ++t) {
      const bool empty = begin[t] == begin[t + 1];
      first[t] = empty ? 0 : segment[begin[t]];
      samples[t] = empty ? 0 : segment[begin[t + 1] - 1] - first[t] + 1;
      offset[t + 1] = offset[t] + samples[t] * width;
    }
  }
};

// outs[k][s * cols + c] = sum over the ranges touching sample s, in order, of column k * cols + c
// of their partial row for s (every sample's row written, zeros where no range touches it).
template <typename Acc>
void add_sample_partials(const SampleRanges& ranges, const std::vector<Acc>& partial,
                         int64_t samples, int64_t cols, Acc* const* outs, int n_outs) {
  const int64_t width = cols * n_outs;
#pragma omp parallel for num_threads(ranges.count) schedule(static)
  for (int64_t s = 0; s < samples; ++s) {
    for (int k = 0; k < n_outs; ++k) {
      Acc* row = outs[k] + s * cols;
      for (int64_t c = 0; c < cols; ++c) row[c] = Acc(0);
      for (int t = 0; t < ranges.count; ++t) {
        if (s < ranges.first[t] || s >= ranges.first[t] + ranges.samples[t]) continue;
        const Acc* part =
            partial.data() + ranges.offset[t] + (s - ranges.first[t]) * width + k * cols;
        for (int64_t c = 0; c < cols; ++c) row[c] += part[c];
      }
    }
  }
}

template <typename Acc>
void modulated_backward(const ModulatedNormBackward& a, int threads) {
  const auto body = cpu_row_kernels().modulated_backward[index_of(a.dtype)];
  const int64_t cols = a.cols;
  const SampleRanges ranges(a.segment, a.rows, threads, 2 * cols);
  std::vector<Acc> dmod(static_cast<size_t>(ranges.offset[ranges.count]), Acc(0));
  Acc* dw = static_cast<Acc*>(a.dweight);
  std::vector<Acc> dw_partial(dw != nullptr ? static_cast<size_t>(ranges.count) * cols : 0, Acc(0));
#pragma omp parallel for num_threads(ranges.count) schedule(static, 1)
  for (int t = 0; t < ranges.count; ++t) {
    body(a, ranges.begin[t], ranges.begin[t + 1], dmod.data() + ranges.offset[t],
         dw != nullptr ? dw_partial.data() + static_cast<size_t>(t) * cols : nullptr);
  }
  Acc* const outs[2] = {static_cast<Acc*>(a.dshift), static_cast<Acc*>(a.dscale)};
  add_sample_partials(ranges, dmod, a.samples, cols, outs, 2);
  if (dw != nullptr) {
#pragma omp parallel for num_threads(ranges.count) schedule(static)
    for (int64_t c = 0; c < cols; ++c) {
      Acc total = 0;
      for (int t = 0; t < ranges.count; ++t) total += dw_partial[static_cast<size_t>(t) * cols + c];
      dw[c] = total;
    }
  }
}

template <typename Acc>
void gated_backward(const GatedResidualBackward& a, int threads) {
  const auto body = cpu_row_kernels().gated_backward[index_of(a.dtype)];
  const SampleRanges ranges(a.segment, a.rows, threads, a.cols);
  std::vector<Acc> dgate(static_cast<size_t>(ranges.offset[ranges.count]), Acc(0));
#pragma omp parallel for num_threads(ranges.count) schedule(static, 1)
  for (int t = 0; t < ranges.count; ++t) {
    body(a, ranges.begin[t], ranges.begin[t + 1], dgate.data() + ranges.offset[t]);
  }
  Acc* const outs[1] = {static_cast<Acc*>(a.dgate)};
  add_sample_partials(ranges, dgate, a.samples, a.cols, outs, 1);
}

// Rows split evenly over the OpenMP threads (the forward passes: no sums across rows).
template <typename Args, typename Body>
void over_rows(const Args& a, Body body, int threads) {
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const int n = omp_get_num_threads();
    body(a, a.rows * t / n, a.rows * (t + 1) / n);
  }
}

}  // namespace

void modulated_norm_forward_cpu(const ModulatedNormForward& a, int threads) {
  over_rows(a, cpu_row_kernels().modulated_forward[index_of(a.dtype)], threads);
}

void modulated_norm_backward_cpu(const ModulatedNormBackward& a, int threads) {
  if (a.dtype == DType::f64) return modulated_backward<double>(a, threads);
  return modulated_backward<float>(a, threads);
}

void gated_residual_forward_cpu(const GatedResidualForward& a, int threads) {
  over_rows(a, cpu_row_kernels().gated_forward[index_of(a.dtype)], threads);
}

void gated_residual_backward_cpu(const GatedResidualBackward& a, int threads) {
  if (a.dtype == DType::f64) return gated_backward<double>(a, threads);
  return gated_backward<float>(a, threads);
}

}  // namespace kernels
}  // namespace megagoku
