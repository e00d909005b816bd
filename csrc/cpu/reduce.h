// Row reductions the compiler can vectorise: a float sum needs reassociation to use vector
// lanes, so each lane keeps its own partial sum (kLanes of them) and the lanes are added at the
// end (a fixed order: the result does not depend on the thread count or the ISA).
#pragma once

#include <cstdint>

#include "../kernels/math.h"

namespace megagoku {
namespace kernels {

constexpr int kLanes = 16;

template <typename Acc>
inline Acc add_lanes(const Acc* part) {
  Acc total = 0;
  for (int i = 0; i < kLanes; ++i) total += part[i];
  return total;
}

// sum of f(c) for c in [0, n) (f returns Acc)
template <typename Acc, typename F>
inline Acc lane_sum(int64_t n, F f) {
  Acc part[kLanes] = {};
  int64_t c = 0;
  const int64_t whole = n - n % kLanes;
  const int tail = static_cast<int>(n - whole);
  for (; c < whole; c += kLanes)
    for (int i = 0; i < kLanes; ++i) part[i] += f(c + i);
  for (int i = 0; i < tail; ++i) part[i] += f(c + i);
  return add_lanes(part);
}

// sum of x[c]^2
template <typename T, typename Acc>
inline Acc sum_squares(const T* __restrict x, int64_t n) {
  Acc part[kLanes] = {};
  int64_t c = 0;
  const int64_t whole = n - n % kLanes;
  const int tail = static_cast<int>(n - whole);  // an int loop bound: vanishes for a constant n
  for (; c < whole; c += kLanes) {
    for (int i = 0; i < kLanes; ++i) {
      const Acc v = to_acc(x[c + i]);
      part[i] += v * v;
    }
  }
  for (int i = 0; i < tail; ++i) {
    const Acc v = to_acc(x[c + i]);
    part[i] += v * v;
  }
  return add_lanes(part);
}

// sum of a[c] * w[c] * b[c] (w == nullptr: all ones)
template <typename T, typename Acc>
inline Acc sum_products(const T* __restrict a, const Acc* __restrict w, const T* __restrict b,
                        int64_t n) {
  Acc part[kLanes] = {};
  int64_t c = 0;
  const int64_t whole = n - n % kLanes;
  const int tail = static_cast<int>(n - whole);
  if (w != nullptr) {
    for (; c < whole; c += kLanes)
      for (int i = 0; i < kLanes; ++i) part[i] += to_acc(a[c + i]) * w[c + i] * to_acc(b[c + i]);
    for (int i = 0; i < tail; ++i) part[i] += to_acc(a[c + i]) * w[c + i] * to_acc(b[c + i]);
  } else {
    for (; c < whole; c += kLanes)
      for (int i = 0; i < kLanes; ++i) part[i] += to_acc(a[c + i]) * to_acc(b[c + i]);
    for (int i = 0; i < tail; ++i) part[i] += to_acc(a[c + i]) * to_acc(b[c + i]);
  }
  return add_lanes(part);
}

}  // namespace kernels
}  // namespace megagoku
