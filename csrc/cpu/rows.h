// The per-row (per-token) bodies of the CPU kernels, written once and compiled once per
// instruction set: rows_generic.cpp, rows_avx2.cpp and rows_avx512.cpp include this header under
// their own target and fill a CpuRowKernels table with it (cpu/isa.h). Everything here has
// internal linkage, so each translation unit keeps its own vectorised copy.
#pragma once

#include <cstdint>

#include "../kernels/api.h"
#include "../kernels/math.h"
#include "isa.h"
#include "reduce.h"
#include "store.h"

namespace megagoku {
namespace kernels {
namespace {

// Rows of a head dim (64, 128) are short enough that loop set-up and peeling cost as much as
// the arithmetic: those widths get copies compiled for the constant (kCols; 0 = any width).
#define MG_DISPATCH_WIDTH(body, width, ...)                  \
  switch (width) {                                           \
    case 64: return body<T, Acc, 64>(__VA_ARGS__);           \
    case 128: return body<T, Acc, 128>(__VA_ARGS__);         \
    default: return body<T, Acc, 0>(__VA_ARGS__);            \
  }

// ---------------------------------------------------------------- RMSNorm
template <typename T, typename Acc, int kCols>
void rms_forward_rows_of(const RmsNormForward& a, int64_t begin, int64_t end) {
  const Acc* __restrict w = static_cast<const Acc*>(a.weight);
  const Acc eps = static_cast<Acc>(a.eps);
  const int64_t cols = kCols > 0 ? kCols : a.cols;
  const bool stream = a.rows * cols * static_cast<int64_t>(sizeof(T)) >= kStreamOutputBytes;
  for (int64_t r = begin; r < end; ++r) {
    const T* __restrict x = static_cast<const T*>(a.x) + r * a.x_stride;
    T* __restrict y = static_cast<T*>(a.y) + r * a.y_stride;
    const Acc inv = rms_inverse(sum_squares<T, Acc>(x, cols), cols, eps);
    static_cast<Acc*>(a.rstd)[r] = inv;
    if (w != nullptr) {
      write_row(y, cols, stream,
                [&](int64_t c) { return Narrow<T, Acc>::from(to_acc(x[c]) * inv * w[c]); });
    } else {
      write_row(y, cols, stream,
                [&](int64_t c) { return Narrow<T, Acc>::from(to_acc(x[c]) * inv); });
    }
  }
  if (stream) stream_fence();
}

template <typename T, typename Acc>
void rms_forward_rows(const RmsNormForward& a, int64_t begin, int64_t end) {
  MG_DISPATCH_WIDTH(rms_forward_rows_of, a.cols, a, begin, end)
}

// `dw` (Acc[cols], or nullptr) collects this range's weight gradient.
template <typename T, typename Acc, int kCols>
void rms_backward_rows_of(const RmsNormBackward& a, int64_t begin, int64_t end, void* dw_out) {
  const Acc* __restrict w = static_cast<const Acc*>(a.weight);
  Acc* __restrict dw = static_cast<Acc*>(dw_out);
  const int64_t cols = kCols > 0 ? kCols : a.cols;
  const bool stream = a.rows * cols * static_cast<int64_t>(sizeof(T)) >= kStreamOutputBytes;
  for (int64_t r = begin; r < end; ++r) {
    const T* __restrict dy = static_cast<const T*>(a.dy) + r * a.dy_stride;
    const T* __restrict x = static_cast<const T*>(a.x) + r * a.x_stride;
    T* __restrict dx = static_cast<T*>(a.dx) + r * a.dx_stride;
    const Acc inv = static_cast<const Acc*>(a.rstd)[r];
    const Acc coef = rms_grad_coefficient(sum_products<T, Acc>(dy, w, x, cols), inv, cols);
    if (w != nullptr && dw != nullptr) {
      write_row(dx, cols, stream, [&](int64_t c) {
        const Acc g = to_acc(dy[c]);
        const Acc xhat = to_acc(x[c]) * inv;
        dw[c] += g * xhat;
        return Narrow<T, Acc>::from(rms_input_grad(g * w[c], xhat, coef, inv));
      });
    } else if (w != nullptr) {
      write_row(dx, cols, stream, [&](int64_t c) {
        const Acc xhat = to_acc(x[c]) * inv;
        return Narrow<T, Acc>::from(rms_input_grad(to_acc(dy[c]) * w[c], xhat, coef, inv));
      });
    } else {
      write_row(dx, cols, stream, [&](int64_t c) {
        const Acc xhat = to_acc(x[c]) * inv;
        return Narrow<T, Acc>::from(rms_input_grad(to_acc(dy[c]), xhat, coef, inv));
      });
    }
  }
  if (stream) stream_fence();
}

template <typename T, typename Acc>
void rms_backward_rows(const RmsNormBackward& a, int64_t begin, int64_t end, void* dw) {
  MG_DISPATCH_WIDTH(rms_backward_rows_of, a.cols, a, begin, end, dw)
}

// ---------------------------------------------------------------- whole-width RMSNorm
// A row is `groups` pieces of `cols` (a token's heads); each piece is read and written with the
// loops of the per-row norm, and the row's sums add the pieces' in order.
template <typename T, typename Acc, int kCols>
void whole_width_forward_rows_of(const WholeWidthRmsNormForward& a, int64_t begin, int64_t end) {
  const Acc* __restrict w = static_cast<const Acc*>(a.weight);
  const Acc* sums = static_cast<const Acc*>(a.sum_sq);
  const Acc eps = static_cast<Acc>(a.eps);
  const int64_t cols = kCols > 0 ? kCols : a.cols;
  const bool stream =
      a.rows * a.groups * cols * static_cast<int64_t>(sizeof(T)) >= kStreamOutputBytes;
  for (int64_t r = begin; r < end; ++r) {
    const T* x = static_cast<const T*>(a.x) + r * a.x_stride;
    T* y = static_cast<T*>(a.y) + r * a.y_stride;
    Acc sum_sq = 0;
    if (sums != nullptr) {
      sum_sq = sums[r];
    } else {
      for (int64_t g = 0; g < a.groups; ++g) sum_sq += sum_squares<T, Acc>(x + g * a.x_group_stride, cols);
    }
    const Acc inv = rms_inverse(sum_sq, a.width, eps);
    static_cast<Acc*>(a.rstd)[r] = inv;
    for (int64_t g = 0; g < a.groups; ++g) {
      const T* __restrict xg = x + g * a.x_group_stride;
      T* __restrict yg = y + g * a.y_group_stride;
      if (w != nullptr) {
        const Acc* __restrict wg = w + g * cols;
        write_row(yg, cols, stream,
                  [&](int64_t c) { return Narrow<T, Acc>::from(to_acc(xg[c]) * inv * wg[c]); });
      } else {
        write_row(yg, cols, stream,
                  [&](int64_t c) { return Narrow<T, Acc>::from(to_acc(xg[c]) * inv); });
      }
    }
  }
  if (stream) stream_fence();
}

template <typename T, typename Acc>
void whole_width_forward_rows(const WholeWidthRmsNormForward& a, int64_t begin, int64_t end) {
  MG_DISPATCH_WIDTH(whole_width_forward_rows_of, a.cols, a, begin, end)
}

template <typename T, typename Acc, int kCols>
void whole_width_backward_rows_of(const WholeWidthRmsNormBackward& a, int64_t begin, int64_t end,
                                  void* dw_out) {
  const Acc* __restrict w = static_cast<const Acc*>(a.weight);
  const Acc* sums = static_cast<const Acc*>(a.sum_gx);
  Acc* __restrict dw = static_cast<Acc*>(dw_out);
  const int64_t cols = kCols > 0 ? kCols : a.cols;
  const bool stream =
      a.rows * a.groups * cols * static_cast<int64_t>(sizeof(T)) >= kStreamOutputBytes;
  for (int64_t r = begin; r < end; ++r) {
    const T* dy = static_cast<const T*>(a.dy) + r * a.dy_stride;
    const T* x = static_cast<const T*>(a.x) + r * a.x_stride;
    T* dx = static_cast<T*>(a.dx) + r * a.dx_stride;
    const Acc inv = static_cast<const Acc*>(a.rstd)[r];
    Acc sum_gx = 0;
    if (sums != nullptr) {
      sum_gx = sums[r];
    } else {
      for (int64_t g = 0; g < a.groups; ++g) {
        sum_gx += sum_products<T, Acc>(dy + g * a.dy_group_stride,
                                       w != nullptr ? w + g * cols : nullptr,
                                       x + g * a.x_group_stride, cols);
      }
    }
    const Acc coef = rms_grad_coefficient(sum_gx, inv, a.width);
    for (int64_t g = 0; g < a.groups; ++g) {
      const T* __restrict dyg = dy + g * a.dy_group_stride;
      const T* __restrict xg = x + g * a.x_group_stride;
      T* __restrict dxg = dx + g * a.dx_group_stride;
      if (w != nullptr && dw != nullptr) {
        const Acc* __restrict wg = w + g * cols;
        Acc* __restrict dwg = dw + g * cols;
        write_row(dxg, cols, stream, [&](int64_t c) {
          const Acc d = to_acc(dyg[c]);
          const Acc xhat = to_acc(xg[c]) * inv;
          dwg[c] += d * xhat;
          return Narrow<T, Acc>::from(rms_input_grad(d * wg[c], xhat, coef, inv));
        });
      } else if (w != nullptr) {
        const Acc* __restrict wg = w + g * cols;
        write_row(dxg, cols, stream, [&](int64_t c) {
          const Acc xhat = to_acc(xg[c]) * inv;
          return Narrow<T, Acc>::from(rms_input_grad(to_acc(dyg[c]) * wg[c], xhat, coef, inv));
        });
      } else {
        write_row(dxg, cols, stream, [&](int64_t c) {
          const Acc xhat = to_acc(xg[c]) * inv;
          return Narrow<T, Acc>::from(rms_input_grad(to_acc(dyg[c]), xhat, coef, inv));
        });
      }
    }
  }
  if (stream) stream_fence();
}

template <typename T, typename Acc>
void whole_width_backward_rows(const WholeWidthRmsNormBackward& a, int64_t begin, int64_t end,
                               void* dw) {
  MG_DISPATCH_WIDTH(whole_width_backward_rows_of, a.cols, a, begin, end, dw)
}

template <typename T, typename Acc, int kCols>
void whole_width_partial_rows_of(const WholeWidthPartialSums& a, int64_t begin, int64_t end) {
  const Acc* w = static_cast<const Acc*>(a.weight);
  const int64_t cols = kCols > 0 ? kCols : a.cols;
  for (int64_t r = begin; r < end; ++r) {
    const T* ar = static_cast<const T*>(a.a) + r * a.a_stride;
    const T* br = static_cast<const T*>(a.b) + r * a.b_stride;
    Acc total = 0;
    for (int64_t g = 0; g < a.groups; ++g) {
      total += sum_products<T, Acc>(ar + g * a.a_group_stride, w != nullptr ? w + g * cols : nullptr,
                                    br + g * a.b_group_stride, cols);
    }
    static_cast<Acc*>(a.out)[r] = total;
  }
}

template <typename T, typename Acc>
void whole_width_partial_rows(const WholeWidthPartialSums& a, int64_t begin, int64_t end) {
  MG_DISPATCH_WIDTH(whole_width_partial_rows_of, a.cols, a, begin, end)
}

// ---------------------------------------------------------------- modulated norm
// The row's normalised value h: a LayerNorm's in Acc; an RMSNorm's (times its gain) rounded to
// T, as the released modules return them (math.h). The same expression forward and backward, so
// the backward's h is the forward's bit for bit.
template <typename T, typename Acc>
inline Acc rms_h(T x, Acc inv, const Acc* w, int64_t c) {
  const Acc xhat = to_acc(x) * inv;
  return to_acc(Narrow<T, Acc>::from(w != nullptr ? xhat * w[c] : xhat));
}

template <typename T, typename Acc>
void modulated_forward_rows(const ModulatedNormForward& a, int64_t begin, int64_t end) {
  const Acc* __restrict w = static_cast<const Acc*>(a.weight);
  const Acc eps = static_cast<Acc>(a.eps);
  const int64_t cols = a.cols;
  const bool stream = a.rows * cols * static_cast<int64_t>(sizeof(T)) >= kStreamOutputBytes;
  for (int64_t r = begin; r < end; ++r) {
    const T* __restrict x = static_cast<const T*>(a.x) + r * a.x_stride;
    T* __restrict y = static_cast<T*>(a.y) + r * a.y_stride;
    const int64_t s = a.segment[r];
    const Acc* __restrict shift = static_cast<const Acc*>(a.shift) + s * a.shift_stride;
    const Acc* __restrict scale = static_cast<const Acc*>(a.scale) + s * a.scale_stride;
    if (a.kind == NormKind::layer) {
      const Acc mean = lane_sum<Acc>(cols, [&](int64_t c) { return to_acc(x[c]); }) / Acc(cols);
      const Acc inv = layer_inverse(lane_sum<Acc>(cols, [&](int64_t c) {
                                      const Acc d = to_acc(x[c]) - mean;
                                      return d * d;
                                    }),
                                    cols, eps);
      static_cast<Acc*>(a.mean)[r] = mean;
      static_cast<Acc*>(a.rstd)[r] = inv;
      write_row(y, cols, stream, [&](int64_t c) {
        return Narrow<T, Acc>::from(modulate((to_acc(x[c]) - mean) * inv, shift[c], scale[c]));
      });
    } else {
      const Acc inv = rms_inverse(sum_squares<T, Acc>(x, cols), cols, eps);
      static_cast<Acc*>(a.rstd)[r] = inv;
      write_row(y, cols, stream, [&](int64_t c) {
        return Narrow<T, Acc>::from(modulate(rms_h<T, Acc>(x[c], inv, w, c), shift[c], scale[c]));
      });
    }
  }
  if (stream) stream_fence();
}

template <typename T, typename Acc>
void modulated_backward_rows(const ModulatedNormBackward& a, int64_t begin, int64_t end,
                             void* dmod_out, void* dw_out) {
  const Acc* __restrict w = static_cast<const Acc*>(a.weight);
  Acc* dmod = static_cast<Acc*>(dmod_out);
  Acc* __restrict dw = static_cast<Acc*>(dw_out);
  const int64_t cols = a.cols;
  const bool stream = a.rows * cols * static_cast<int64_t>(sizeof(T)) >= kStreamOutputBytes;
  const int64_t first = begin < end ? a.segment[begin] : 0;
  for (int64_t r = begin; r < end; ++r) {
    const T* __restrict dy = static_cast<const T*>(a.dy) + r * a.dy_stride;
    const T* __restrict x = static_cast<const T*>(a.x) + r * a.x_stride;
    T* __restrict dx = static_cast<T*>(a.dx) + r * a.dx_stride;
    const int64_t s = a.segment[r];
    const Acc* __restrict scale = static_cast<const Acc*>(a.scale) + s * a.scale_stride;
    Acc* __restrict dshift = dmod + (s - first) * 2 * cols;
    Acc* __restrict dscale = dshift + cols;
    const Acc inv = static_cast<const Acc*>(a.rstd)[r];
    if (a.kind == NormKind::layer) {
      const Acc mean = static_cast<const Acc*>(a.mean)[r];
      const Acc sum_g =
          lane_sum<Acc>(cols, [&](int64_t c) { return to_acc(dy[c]) * (Acc(1) + scale[c]); });
      const Acc sum_gx = lane_sum<Acc>(cols, [&](int64_t c) {
        return to_acc(dy[c]) * (Acc(1) + scale[c]) * ((to_acc(x[c]) - mean) * inv);
      });
      const Acc mean_g = sum_g / Acc(cols);
      const Acc mean_gx = sum_gx / Acc(cols);
      write_row(dx, cols, stream, [&](int64_t c) {
        const Acc d = to_acc(dy[c]);
        const Acc xhat = (to_acc(x[c]) - mean) * inv;
        dshift[c] += d;
        dscale[c] += d * xhat;
        return Narrow<T, Acc>::from(
            layer_input_grad(d * (Acc(1) + scale[c]), xhat, mean_g, mean_gx, inv));
      });
    } else {
      const Acc sum_gx = lane_sum<Acc>(cols, [&](int64_t c) {
        const Acc g = to_acc(dy[c]) * (Acc(1) + scale[c]);
        return (w != nullptr ? g * w[c] : g) * to_acc(x[c]);
      });
      const Acc coef = rms_grad_coefficient(sum_gx, inv, cols);
      write_row(dx, cols, stream, [&](int64_t c) {
        const Acc d = to_acc(dy[c]);
        const Acc dh = d * (Acc(1) + scale[c]);
        const Acc xhat = to_acc(x[c]) * inv;
        dshift[c] += d;
        dscale[c] += d * rms_h<T, Acc>(x[c], inv, w, c);
        if (dw != nullptr) dw[c] += dh * xhat;
        return Narrow<T, Acc>::from(rms_input_grad(w != nullptr ? dh * w[c] : dh, xhat, coef, inv));
      });
    }
  }
  if (stream) stream_fence();
}

// ---------------------------------------------------------------- gated residual
template <typename T, typename Acc>
void gated_forward_rows(const GatedResidualForward& a, int64_t begin, int64_t end) {
  const int64_t cols = a.cols;
  const bool stream = a.rows * cols * static_cast<int64_t>(sizeof(T)) >= kStreamOutputBytes;
  for (int64_t r = begin; r < end; ++r) {
    const T* __restrict x = static_cast<const T*>(a.x) + r * a.x_stride;
    const T* __restrict out = static_cast<const T*>(a.out) + r * a.out_stride;
    T* __restrict y = static_cast<T*>(a.y) + r * a.y_stride;
    const Acc* __restrict gate = static_cast<const Acc*>(a.gate) + a.segment[r] * a.gate_stride;
    write_row(y, cols, stream, [&](int64_t c) {
      const Acc gated = to_acc(Narrow<T, Acc>::from(gate[c] * to_acc(out[c])));
      return Narrow<T, Acc>::from(to_acc(x[c]) + gated);
    });
  }
  if (stream) stream_fence();
}

template <typename T, typename Acc>
void gated_backward_rows(const GatedResidualBackward& a, int64_t begin, int64_t end,
                         void* dgate_out) {
  Acc* dgate = static_cast<Acc*>(dgate_out);
  const int64_t cols = a.cols;
  const bool stream = a.rows * cols * static_cast<int64_t>(sizeof(T)) >= kStreamOutputBytes;
  const int64_t first = begin < end ? a.segment[begin] : 0;
  for (int64_t r = begin; r < end; ++r) {
    const T* __restrict dy = static_cast<const T*>(a.dy) + r * a.dy_stride;
    const T* __restrict out = static_cast<const T*>(a.out) + r * a.out_stride;
    T* __restrict dout = static_cast<T*>(a.dout) + r * a.dout_stride;
    const int64_t s = a.segment[r];
    const Acc* __restrict gate = static_cast<const Acc*>(a.gate) + s * a.gate_stride;
    Acc* __restrict sums = dgate + (s - first) * cols;
    write_row(dout, cols, stream, [&](int64_t c) {
      const Acc d = to_acc(dy[c]);
      sums[c] += d * to_acc(out[c]);
      return Narrow<T, Acc>::from(d * gate[c]);
    });
  }
  if (stream) stream_fence();
}

// ---------------------------------------------------------------- 3D RoPE
// One head's pairs. `x` and `out` are the same memory when rotating in place: each pair is read
// before it is written, by the same iteration.
template <typename T, typename Acc>
inline void rotate_head(const T* x, T* out, int pairs, const Acc* cos_table, const Acc* sin_table) {
#pragma GCC ivdep
  for (int j = 0; j < pairs; ++j) {
    Acc y0, y1;
    rotate_pair(to_acc(x[2 * j]), to_acc(x[2 * j + 1]), cos_table[j], sin_table[j], y0, y1);
    out[2 * j] = Narrow<T, Acc>::from(y0);
    out[2 * j + 1] = Narrow<T, Acc>::from(y1);
  }
}

// Each token's cos/sin table is computed once and applied to all of its heads. A large
// out-of-place output is streamed (in place, the lines are already in cache: stored normally).
template <typename T, typename Acc, int kHeadDim>
void rope_tokens_of(const Rope3d& a, int64_t begin, int64_t end) {
  const int pairs = static_cast<int>((kHeadDim > 0 ? kHeadDim : a.head_dim) / 2);
  const bool stream = a.out != a.x && a.tokens * a.heads * 2 * pairs *
                                              static_cast<int64_t>(sizeof(T)) >= kStreamOutputBytes;
  const Acc sign = a.inverse ? Acc(-1) : Acc(1);
  Acc cos_table[kMaxRopeHeadDim / 2];
  Acc sin_table[kMaxRopeHeadDim / 2];
  for (int64_t l = begin; l < end; ++l) {
    const int64_t* pos = a.positions + 3 * l;
    for (int j = 0; j < pairs; ++j) {
      const Acc angle = rope_angle<Acc>(pos[rope_axis(j, a.pairs_t, a.pairs_h)], a.inv_freq[j]);
      cos_table[j] = std::cos(angle);
      sin_table[j] = sign * std::sin(angle);
    }
    for (int64_t h = 0; h < a.heads; ++h) {
      const T* x = static_cast<const T*>(a.x) + l * a.x_token_stride + h * a.x_head_stride;
      T* out = static_cast<T*>(a.out) + l * a.out_token_stride + h * a.out_head_stride;
      if (stream) {
        // Rotated into an L1 buffer, then streamed out in whole lines.
        alignas(kLineBytes) T rotated[kMaxRopeHeadDim];
        rotate_head<T, Acc>(x, rotated, pairs, cos_table, sin_table);
        write_row(out, 2 * pairs, true, [&](int64_t c) { return rotated[c]; });
      } else {
        rotate_head<T, Acc>(x, out, pairs, cos_table, sin_table);
      }
    }
  }
  if (stream) stream_fence();
}

template <typename T, typename Acc>
void rope_tokens(const Rope3d& a, int64_t begin, int64_t end) {
  MG_DISPATCH_WIDTH(rope_tokens_of, a.head_dim, a, begin, end)
}

#undef MG_DISPATCH_WIDTH

constexpr CpuRowKernels row_kernel_table(const char* name) {
  return CpuRowKernels{
      name,
      {rms_forward_rows<float, float>, rms_forward_rows<double, double>,
       rms_forward_rows<bf16, float>},
      {rms_backward_rows<float, float>, rms_backward_rows<double, double>,
       rms_backward_rows<bf16, float>},
      {whole_width_forward_rows<float, float>, whole_width_forward_rows<double, double>,
       whole_width_forward_rows<bf16, float>},
      {whole_width_backward_rows<float, float>, whole_width_backward_rows<double, double>,
       whole_width_backward_rows<bf16, float>},
      {whole_width_partial_rows<float, float>, whole_width_partial_rows<double, double>,
       whole_width_partial_rows<bf16, float>},
      {modulated_forward_rows<float, float>, modulated_forward_rows<double, double>,
       modulated_forward_rows<bf16, float>},
      {modulated_backward_rows<float, float>, modulated_backward_rows<double, double>,
       modulated_backward_rows<bf16, float>},
      {gated_forward_rows<float, float>, gated_forward_rows<double, double>,
       gated_forward_rows<bf16, float>},
      {gated_backward_rows<float, float>, gated_backward_rows<double, double>,
       gated_backward_rows<bf16, float>},
      {rope_tokens<float, float>, rope_tokens<double, double>, rope_tokens<bf16, float>},
  };
}

}  // namespace
}  // namespace kernels
}  // namespace megagoku
