// cuda_sim's float16: GCC's _Float16 (IEEE binary16, conversions round to nearest even).
#pragma once
#include "sim.h"

struct __half {
  _Float16 value;
};

inline float __half2float(__half h) { return static_cast<float>(h.value); }
inline __half __float2half_rn(float f) { return {static_cast<_Float16>(f)}; }
