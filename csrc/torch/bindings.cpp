// torch bindings of the fused kernels: check the tensors, fill the launch structs of
// csrc/kernels/api.h, and dispatch to the CPU or (when built with it) the CUDA kernels.
// The autograd Functions around these live in megagoku/ops/fused.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
// pybind11 with torch's Tensor casters; not <torch/extension.h>, which adds the whole C++
// frontend (torch/all.h) and doubled this file's compile time (47 s against 16 s with -g0).
#include <torch/csrc/utils/pybind.h>

#include <string>
#include <tuple>

#include "../cpu/isa.h"
#include "../kernels/api.h"

// MEGAGOKU_CUDA_SIM: the CUDA kernels compiled for cuda_sim (csrc/cuda_sim/sim.h), the test
// build in which CPU tensors run through them (tests/csrc/cuda_sim.py); never an installed one.
#if defined(MEGAGOKU_WITH_CUDA) && !defined(MEGAGOKU_CUDA_SIM)
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace mk = megagoku::kernels;

namespace {

mk::DType kernel_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return mk::DType::f32;
    case at::kDouble: return mk::DType::f64;
    case at::kBFloat16: return mk::DType::bf16;
    case at::kHalf:
#ifndef MEGAGOKU_CUDA_SIM
      TORCH_CHECK(t.is_cuda(), "megagoku kernels: float16 runs on CUDA only (use bfloat16 on the CPU)");
#endif
      return mk::DType::f16;
    default:
      TORCH_CHECK(false, "megagoku kernels: unsupported dtype ", t.scalar_type(),
                  " (float32, float64, bfloat16; float16 on CUDA)");
  }
}

at::ScalarType accumulate_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// A [rows, cols] view whose rows are evenly spaced and whose columns are contiguous.
void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, "megagoku kernels: ", name, " must be [rows, cols], got ", t.sizes());
  TORCH_CHECK(t.size(1) == 0 || t.stride(1) == 1 || t.size(1) == 1,
              "megagoku kernels: ", name, " must have contiguous columns, got strides ", t.strides());
}

#ifdef MEGAGOKU_WITH_CUDA
void check_error(const char* error, const char* op) {
  TORCH_CHECK(error == nullptr, "megagoku kernels: ", op, " failed: ", error);
}

#ifdef MEGAGOKU_CUDA_SIM
void* current_stream() { return nullptr; }
#else
void* current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
#endif
#endif

// Runs `cpu(threads)` for a CPU tensor, or `cuda(stream)` with x's GPU current. The CUDA launch
// functions exist only in a CUDA build: callers wrap their CUDA lambda in MG_CUDA.
#ifdef MEGAGOKU_WITH_CUDA
#define MG_CUDA(...) __VA_ARGS__
#else
#define MG_CUDA(...) [](void*) {}
#endif

template <typename Cpu, typename Cuda>
void run_on(const at::Tensor& x, Cpu cpu, Cuda cuda) {
#ifdef MEGAGOKU_CUDA_SIM
  (void)x;
  (void)cpu;
  cuda(current_stream());  // every tensor is a CPU one, every call a simulated CUDA launch
#else
  if (!x.is_cuda()) {
    cpu(at::get_num_threads());
    return;
  }
#ifdef MEGAGOKU_WITH_CUDA
  const c10::cuda::CUDAGuard guard(x.device());
  cuda(current_stream());
#else
  (void)cuda;
  TORCH_CHECK(false, "megagoku kernels were built without CUDA; rebuild with a CUDA torch and nvcc");
#endif
#endif
}

void check_output(const at::Tensor& out, const at::Tensor& like, const char* name) {
  check_rows(out, name);
  TORCH_CHECK(out.sizes() == like.sizes() && out.scalar_type() == like.scalar_type() &&
                  out.device() == like.device(),
              "megagoku kernels: ", name, " ", out.sizes(), " ", out.scalar_type(),
              " does not match x ", like.sizes(), " ", like.scalar_type());
}

void check_vector(const at::Tensor& t, int64_t n, at::ScalarType acc, const at::Tensor& like,
                  const char* name) {
  TORCH_CHECK(t.scalar_type() == acc && t.is_contiguous() && t.numel() == n &&
                  t.device() == like.device(),
              "megagoku kernels: ", name, " must be a contiguous ", acc, " tensor of ", n,
              " elements on ", like.device());
}

// The weight as the kernels read it: Acc[cols], contiguous, on x's device.
at::Tensor kernel_weight(const c10::optional<at::Tensor>& weight, const at::Tensor& x) {
  if (!weight.has_value()) return at::Tensor();
  TORCH_CHECK(weight->numel() == x.size(1), "megagoku kernels: weight has ", weight->numel(),
              " elements for rows of ", x.size(1));
  return weight->to(x.device(), accumulate_type(x)).contiguous();
}

// The kernels write only into tensors the caller allocated (so that a test can poison them
// first, and so that what an autograd Function returns is not a view made here).

// y = rms_norm(x) * weight; rstd[r] = 1 / rms of row r.
void rms_norm_forward(const at::Tensor& x, const c10::optional<at::Tensor>& weight, double eps,
                      at::Tensor& y, at::Tensor& rstd) {
  check_rows(x, "x");
  check_output(y, x, "y");
  check_vector(rstd, x.size(0), accumulate_type(x), x, "rstd");
  const at::Tensor w = kernel_weight(weight, x);
  if (x.numel() == 0) return;
  mk::RmsNormForward args{kernel_dtype(x), x.data_ptr(), x.stride(0), y.data_ptr(), y.stride(0),
                          w.defined() ? w.data_ptr() : nullptr, rstd.data_ptr(), x.size(0),
                          x.size(1), eps};
  run_on(x, [&](int threads) { mk::rms_norm_forward_cpu(args, threads); },
         MG_CUDA([&](void* stream) {
           check_error(mk::rms_norm_forward_cuda(args, stream), "rms_norm_forward");
         }));
}

// dx (and dweight, when given: Acc[cols], overwritten) from dy, x, weight and the forward's rstd.
void rms_norm_backward(const at::Tensor& dy, const at::Tensor& x,
                       const c10::optional<at::Tensor>& weight, const at::Tensor& rstd,
                       at::Tensor& dx, const c10::optional<at::Tensor>& dweight) {
  check_rows(x, "x");
  check_output(dy, x, "dy");
  check_output(dx, x, "dx");
  const auto acc = accumulate_type(x);
  check_vector(rstd, x.size(0), acc, x, "rstd");
  const at::Tensor w = kernel_weight(weight, x);
  TORCH_CHECK(!dweight.has_value() || w.defined(),
              "megagoku kernels: a weight gradient was asked for a norm without a weight");
  if (dweight.has_value()) {
    check_vector(*dweight, x.size(1), acc, x, "dweight");
    if (x.size(0) == 0) dweight->zero_();
  }
  if (x.numel() == 0) return;
  mk::RmsNormBackward args{kernel_dtype(x), dy.data_ptr(), dy.stride(0), x.data_ptr(),
                           x.stride(0), dx.data_ptr(), dx.stride(0),
                           w.defined() ? w.data_ptr() : nullptr, rstd.data_ptr(),
                           dweight.has_value() ? dweight->data_ptr() : nullptr, nullptr,
                           x.size(0), x.size(1)};
  run_on(x, [&](int threads) { mk::rms_norm_backward_cpu(args, threads); },
         MG_CUDA([&](void* stream) {
           at::Tensor workspace = at::empty({mk::rms_norm_backward_workspace_cuda(args)},
                                            x.options().dtype(at::kByte));
           args.workspace = workspace.data_ptr();
           check_error(mk::rms_norm_backward_cuda(args, stream), "rms_norm_backward");
         }));
}

// A [rows, groups, cols] view whose last dim is contiguous (the heads of Q or K inside a fused
// QKV output: rows and groups evenly spaced, any strides).
void check_grouped(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 3, "megagoku kernels: ", name, " must be [tokens, heads, head_dim], got ",
              t.sizes());
  TORCH_CHECK(t.size(2) <= 1 || t.stride(2) == 1, "megagoku kernels: ", name,
              " must have a contiguous head dim, got strides ", t.strides());
}

void check_grouped_like(const at::Tensor& t, const at::Tensor& like, const char* name) {
  check_grouped(t, name);
  TORCH_CHECK(t.sizes() == like.sizes() && t.scalar_type() == like.scalar_type() &&
                  t.device() == like.device(),
              "megagoku kernels: ", name, " ", t.sizes(), " ", t.scalar_type(), " ", t.device(),
              " does not match x ", like.sizes(), " ", like.scalar_type(), " ", like.device());
}

// The whole-width gain as the kernels read it: Acc[heads * head_dim], contiguous, on x's device.
at::Tensor whole_width_weight(const c10::optional<at::Tensor>& weight, const at::Tensor& x) {
  if (!weight.has_value()) return at::Tensor();
  TORCH_CHECK(weight->numel() == x.size(1) * x.size(2), "megagoku kernels: weight has ",
              weight->numel(), " elements for ", x.size(1), " heads of ", x.size(2));
  return weight->to(x.device(), accumulate_type(x)).contiguous();
}

int64_t checked_width(int64_t width, const at::Tensor& x) {
  TORCH_CHECK(width >= x.size(1) * x.size(2) && width > 0, "megagoku kernels: width ", width,
              " is less than this rank's ", x.size(1), " heads of ", x.size(2));
  return width;
}

const void* optional_sums(const c10::optional<at::Tensor>& sums, const at::Tensor& x,
                          const char* name) {
  if (!sums.has_value()) return nullptr;
  check_vector(*sums, x.size(0), accumulate_type(x), x, name);
  return sums->data_ptr();
}

// y[r] = x[r] / rms over the whole width * weight; rstd[r] = 1 / rms of token r. `sum_sq`: the
// tokens' sums of squares over the whole width, added over the tensor-parallel ranks (else
// computed here from this rank's heads).
void whole_width_rms_norm_forward(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                  double eps, int64_t width,
                                  const c10::optional<at::Tensor>& sum_sq, at::Tensor& y,
                                  at::Tensor& rstd) {
  check_grouped(x, "x");
  check_grouped_like(y, x, "y");
  check_vector(rstd, x.size(0), accumulate_type(x), x, "rstd");
  const at::Tensor w = whole_width_weight(weight, x);
  const void* sums = optional_sums(sum_sq, x, "sum_sq");
  width = checked_width(width, x);
  if (x.numel() == 0) return;
  mk::WholeWidthRmsNormForward args{kernel_dtype(x), x.data_ptr(), x.stride(0), x.stride(1),
                                    y.data_ptr(), y.stride(0), y.stride(1),
                                    w.defined() ? w.data_ptr() : nullptr, sums, rstd.data_ptr(),
                                    x.size(0), x.size(1), x.size(2), width, eps};
  run_on(x, [&](int threads) { mk::whole_width_rms_norm_forward_cpu(args, threads); },
         MG_CUDA([&](void* stream) {
           check_error(mk::whole_width_rms_norm_forward_cuda(args, stream),
                       "whole_width_rms_norm_forward");
         }));
}

// dx (and dweight: Acc[heads * head_dim], overwritten) from dy, x, weight, the forward's rstd and
// `sum_gx`, the tokens' sums of dy * weight * x over the whole width (TP: added over the ranks;
// else computed here).
void whole_width_rms_norm_backward(const at::Tensor& dy, const at::Tensor& x,
                                   const c10::optional<at::Tensor>& weight, const at::Tensor& rstd,
                                   int64_t width, const c10::optional<at::Tensor>& sum_gx,
                                   at::Tensor& dx, const c10::optional<at::Tensor>& dweight) {
  check_grouped(x, "x");
  check_grouped_like(dy, x, "dy");
  check_grouped_like(dx, x, "dx");
  const auto acc = accumulate_type(x);
  check_vector(rstd, x.size(0), acc, x, "rstd");
  const at::Tensor w = whole_width_weight(weight, x);
  const void* sums = optional_sums(sum_gx, x, "sum_gx");
  width = checked_width(width, x);
  TORCH_CHECK(!dweight.has_value() || w.defined(),
              "megagoku kernels: a weight gradient was asked for a norm without a weight");
  if (dweight.has_value()) {
    check_vector(*dweight, x.size(1) * x.size(2), acc, x, "dweight");
    if (x.size(0) == 0) dweight->zero_();
  }
  if (x.numel() == 0) return;
  mk::WholeWidthRmsNormBackward args{kernel_dtype(x), dy.data_ptr(), dy.stride(0), dy.stride(1),
                                     x.data_ptr(), x.stride(0), x.stride(1), dx.data_ptr(),
                                     dx.stride(0), dx.stride(1),
                                     w.defined() ? w.data_ptr() : nullptr, rstd.data_ptr(), sums,
                                     dweight.has_value() ? dweight->data_ptr() : nullptr, nullptr,
                                     x.size(0), x.size(1), x.size(2), width};
  run_on(x, [&](int threads) { mk::whole_width_rms_norm_backward_cpu(args, threads); },
         MG_CUDA([&](void* stream) {
           at::Tensor workspace =
               at::empty({mk::whole_width_rms_norm_backward_workspace_cuda(args)},
                         x.options().dtype(at::kByte));
           args.workspace = workspace.data_ptr();
           check_error(mk::whole_width_rms_norm_backward_cuda(args, stream),
                       "whole_width_rms_norm_backward");
         }));
}

// out[r] = sum over token r's heads of a * weight * b: this rank's part of a whole-width sum.
void whole_width_partial_sums(const at::Tensor& a, const c10::optional<at::Tensor>& weight,
                              const at::Tensor& b, at::Tensor& out) {
  check_grouped(a, "a");
  check_grouped_like(b, a, "b");
  check_vector(out, a.size(0), accumulate_type(a), a, "out");
  const at::Tensor w = whole_width_weight(weight, a);
  if (a.size(0) == 0) return;
  if (a.numel() == 0) {
    out.zero_();
    return;
  }
  mk::WholeWidthPartialSums args{kernel_dtype(a), a.data_ptr(), a.stride(0), a.stride(1),
                                 b.data_ptr(), b.stride(0), b.stride(1),
                                 w.defined() ? w.data_ptr() : nullptr, out.data_ptr(), a.size(0),
                                 a.size(1), a.size(2)};
  run_on(a, [&](int threads) { mk::whole_width_partial_sums_cpu(args, threads); },
         MG_CUDA([&](void* stream) {
           check_error(mk::whole_width_partial_sums_cuda(args, stream), "whole_width_partial_sums");
         }));
}

mk::NormKind norm_kind(const std::string& kind) {
  if (kind == "layer") return mk::NormKind::layer;
  TORCH_CHECK(kind == "rms", "megagoku kernels: norm kind must be 'layer' or 'rms', got '", kind,
              "'");
  return mk::NormKind::rms;
}

// Per-sample rows (shift, scale: Acc[samples, cols] with contiguous columns).
void check_sample_rows(const at::Tensor& t, const at::Tensor& x, const char* name) {
  check_rows(t, name);
  TORCH_CHECK(t.scalar_type() == accumulate_type(x) && t.size(1) == x.size(1) &&
                  t.device() == x.device(),
              "megagoku kernels: ", name, " must be ", accumulate_type(x), " [samples, ", x.size(1),
              "] on ", x.device(), ", got ", t.scalar_type(), " ", t.sizes(), " ", t.device());
}

// Each row's sample: int64, contiguous, one per row, sorted and in [0, samples). The values are
// checked for CPU tensors (no device sync on a GPU: the model builds them sorted).
void check_segment(const at::Tensor& segment, const at::Tensor& x, int64_t samples) {
  TORCH_CHECK(segment.dim() == 1 && segment.size(0) == x.size(0) &&
                  segment.scalar_type() == at::kLong && segment.is_contiguous() &&
                  segment.device() == x.device(),
              "megagoku kernels: segment must be a contiguous int64 [rows] tensor on ",
              x.device(), ", got ", segment.sizes(), " ", segment.scalar_type());
  if (segment.is_cuda() || segment.numel() == 0) return;
  const int64_t* s = segment.data_ptr<int64_t>();
  for (int64_t r = 0; r < segment.numel(); ++r) {
    TORCH_CHECK(s[r] >= 0 && s[r] < samples, "megagoku kernels: segment[", r, "] = ", s[r],
                " is not a sample in [0, ", samples, ")");
    TORCH_CHECK(r == 0 || s[r] >= s[r - 1], "megagoku kernels: segment is not sorted (row ", r,
                ")");
  }
}

// y = norm(x) * (1 + scale[segment]) + shift[segment], in the accumulation type; kind "layer"
// (mean, rstd saved) or "rms" (rstd saved; `mean` must be None).
void modulated_norm_forward(const at::Tensor& x, const std::string& kind,
                            const c10::optional<at::Tensor>& weight, double eps,
                            const at::Tensor& shift, const at::Tensor& scale,
                            const at::Tensor& segment, at::Tensor& y,
                            const c10::optional<at::Tensor>& mean, at::Tensor& rstd) {
  const mk::NormKind k = norm_kind(kind);
  check_rows(x, "x");
  check_output(y, x, "y");
  check_sample_rows(shift, x, "shift");
  check_sample_rows(scale, x, "scale");
  TORCH_CHECK(shift.size(0) == scale.size(0), "megagoku kernels: shift has ", shift.size(0),
              " samples, scale ", scale.size(0));
  check_segment(segment, x, shift.size(0));
  const auto acc = accumulate_type(x);
  check_vector(rstd, x.size(0), acc, x, "rstd");
  TORCH_CHECK(mean.has_value() == (k == mk::NormKind::layer),
              "megagoku kernels: a mean buffer is for the layer norm only, and it needs one");
  if (mean.has_value()) check_vector(*mean, x.size(0), acc, x, "mean");
  TORCH_CHECK(!weight.has_value() || k == mk::NormKind::rms,
              "megagoku kernels: the modulated layer norm has no gain");
  const at::Tensor w = kernel_weight(weight, x);
  if (x.numel() == 0) return;
  mk::ModulatedNormForward args{kernel_dtype(x), k, x.data_ptr(), x.stride(0), y.data_ptr(),
                                y.stride(0), w.defined() ? w.data_ptr() : nullptr,
                                shift.data_ptr(), shift.stride(0), scale.data_ptr(),
                                scale.stride(0), segment.data_ptr<int64_t>(),
                                mean.has_value() ? mean->data_ptr() : nullptr, rstd.data_ptr(),
                                x.size(0), x.size(1), shift.size(0), eps};
  run_on(x, [&](int threads) { mk::modulated_norm_forward_cpu(args, threads); },
         MG_CUDA([&](void* stream) {
           check_error(mk::modulated_norm_forward_cuda(args, stream), "modulated_norm_forward");
         }));
}

// dx, the per-sample dshift and dscale (Acc[samples, cols], overwritten) and, when given, the
// gain's dweight (Acc[cols], overwritten).
void modulated_norm_backward(const at::Tensor& dy, const at::Tensor& x, const std::string& kind,
                             const c10::optional<at::Tensor>& weight, const at::Tensor& scale,
                             const at::Tensor& segment, const c10::optional<at::Tensor>& mean,
                             const at::Tensor& rstd, at::Tensor& dx, at::Tensor& dshift,
                             at::Tensor& dscale, const c10::optional<at::Tensor>& dweight) {
  const mk::NormKind k = norm_kind(kind);
  check_rows(x, "x");
  check_output(dy, x, "dy");
  check_output(dx, x, "dx");
  check_sample_rows(scale, x, "scale");
  const int64_t samples = scale.size(0);
  check_segment(segment, x, samples);
  const auto acc = accumulate_type(x);
  check_vector(rstd, x.size(0), acc, x, "rstd");
  TORCH_CHECK(mean.has_value() == (k == mk::NormKind::layer),
              "megagoku kernels: a mean buffer is for the layer norm only, and it needs one");
  if (mean.has_value()) check_vector(*mean, x.size(0), acc, x, "mean");
  check_vector(dshift, samples * x.size(1), acc, x, "dshift");
  check_vector(dscale, samples * x.size(1), acc, x, "dscale");
  TORCH_CHECK(!weight.has_value() || k == mk::NormKind::rms,
              "megagoku kernels: the modulated layer norm has no gain");
  const at::Tensor w = kernel_weight(weight, x);
  TORCH_CHECK(!dweight.has_value() || w.defined(),
              "megagoku kernels: a weight gradient was asked for a norm without a weight");
  if (dweight.has_value()) check_vector(*dweight, x.size(1), acc, x, "dweight");
  if (x.numel() == 0) {
    dshift.zero_();
    dscale.zero_();
    if (dweight.has_value()) dweight->zero_();
    return;
  }
  mk::ModulatedNormBackward args{kernel_dtype(x), k, dy.data_ptr(), dy.stride(0), x.data_ptr(),
                                 x.stride(0), dx.data_ptr(), dx.stride(0),
                                 w.defined() ? w.data_ptr() : nullptr, scale.data_ptr(),
                                 scale.stride(0), segment.data_ptr<int64_t>(),
                                 mean.has_value() ? mean->data_ptr() : nullptr, rstd.data_ptr(),
                                 dshift.data_ptr(), dscale.data_ptr(),
                                 dweight.has_value() ? dweight->data_ptr() : nullptr, nullptr,
                                 x.size(0), x.size(1), samples};
  run_on(x, [&](int threads) { mk::modulated_norm_backward_cpu(args, threads); },
         MG_CUDA([&](void* stream) {
           at::Tensor workspace = at::empty({mk::modulated_norm_backward_workspace_cuda(args)},
                                            x.options().dtype(at::kByte));
           args.workspace = workspace.data_ptr();
           check_error(mk::modulated_norm_backward_cuda(args, stream), "modulated_norm_backward");
         }));
}

// y = x + narrow(gate[segment] * out), the product in the accumulation type.
void gated_residual_forward(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& out,
                            const at::Tensor& segment, at::Tensor& y) {
  check_rows(x, "x");
  check_output(out, x, "out");
  check_output(y, x, "y");
  check_sample_rows(gate, x, "gate");
  check_segment(segment, x, gate.size(0));
  if (x.numel() == 0) return;
  mk::GatedResidualForward args{kernel_dtype(x), x.data_ptr(), x.stride(0), out.data_ptr(),
                                out.stride(0), y.data_ptr(), y.stride(0), gate.data_ptr(),
                                gate.stride(0), segment.data_ptr<int64_t>(), x.size(0),
                                x.size(1), gate.size(0)};
  run_on(x, [&](int threads) { mk::gated_residual_forward_cpu(args, threads); },
         MG_CUDA([&](void* stream) {
           check_error(mk::gated_residual_forward_cuda(args, stream), "gated_residual_forward");
         }));
}

// dout = narrow(dy * gate[segment]); dgate (Acc[samples, cols], overwritten) = each sample's sum
// of dy * out.
void gated_residual_backward(const at::Tensor& dy, const at::Tensor& gate, const at::Tensor& out,
                             const at::Tensor& segment, at::Tensor& dout, at::Tensor& dgate) {
  check_rows(out, "out");
  check_output(dy, out, "dy");
  check_output(dout, out, "dout");
  check_sample_rows(gate, out, "gate");
  const int64_t samples = gate.size(0);
  check_segment(segment, out, samples);
  check_vector(dgate, samples * out.size(1), accumulate_type(out), out, "dgate");
  if (out.numel() == 0) {
    dgate.zero_();
    return;
  }
  mk::GatedResidualBackward args{kernel_dtype(out), dy.data_ptr(), dy.stride(0), out.data_ptr(),
                                 out.stride(0), gate.data_ptr(), gate.stride(0),
                                 segment.data_ptr<int64_t>(), dout.data_ptr(), dout.stride(0),
                                 dgate.data_ptr(), nullptr, out.size(0), out.size(1), samples};
  run_on(out, [&](int threads) { mk::gated_residual_backward_cpu(args, threads); },
         MG_CUDA([&](void* stream) {
           at::Tensor workspace = at::empty({mk::gated_residual_backward_workspace_cuda(args)},
                                            out.options().dtype(at::kByte));
           args.workspace = workspace.data_ptr();
           check_error(mk::gated_residual_backward_cuda(args, stream), "gated_residual_backward");
         }));
}

// out[l, h, :] = rotate(x[l, h, :]) by token l's position; `out` may be `x` itself (in place).
void rope_3d(const at::Tensor& x, at::Tensor& out, const at::Tensor& positions,
             const at::Tensor& inv_freq, int64_t pairs_t, int64_t pairs_h, bool inverse) {
  TORCH_CHECK(x.dim() == 3 && out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type() &&
                  out.device() == x.device(),
              "megagoku kernels: rope wants x and out of one shape [tokens, heads, head_dim], "
              "dtype and device, got ", x.sizes(), " ", x.device(), " and ", out.sizes(), " ",
              out.device());
  const int64_t head_dim = x.size(2);
  TORCH_CHECK(head_dim % 2 == 0 && head_dim <= mk::kMaxRopeHeadDim,
              "megagoku kernels: rope head_dim must be even and at most ", mk::kMaxRopeHeadDim,
              ", got ", head_dim);
  TORCH_CHECK((x.stride(2) == 1 || head_dim <= 1) && (out.stride(2) == 1 || head_dim <= 1),
              "megagoku kernels: rope wants a contiguous head dim");
  TORCH_CHECK(positions.dim() == 2 && positions.size(0) == x.size(0) && positions.size(1) == 3 &&
                  positions.scalar_type() == at::kLong && positions.is_contiguous() &&
                  positions.device() == x.device(),
              "megagoku kernels: positions must be a contiguous int64 [tokens, 3] tensor on ",
              x.device(), ", got ", positions.sizes(), " ", positions.scalar_type());
  TORCH_CHECK(inv_freq.scalar_type() == at::kDouble && inv_freq.is_contiguous() &&
                  inv_freq.numel() == head_dim / 2 && inv_freq.device() == x.device(),
              "megagoku kernels: inv_freq must be a contiguous float64 [head_dim / 2] tensor on ",
              x.device());
  TORCH_CHECK(pairs_t >= 0 && pairs_h >= 0 && pairs_t + pairs_h <= head_dim / 2,
              "megagoku kernels: rope split pairs (", pairs_t, ", ", pairs_h, ") exceed head_dim ",
              head_dim);
  if (x.numel() == 0) return;
  mk::Rope3d args{kernel_dtype(x), x.data_ptr(), x.stride(0), x.stride(1), out.data_ptr(),
                  out.stride(0), out.stride(1), positions.data_ptr<int64_t>(),
                  inv_freq.data_ptr<double>(), x.size(0), x.size(1), head_dim,
                  static_cast<int>(pairs_t), static_cast<int>(pairs_h), inverse};
  run_on(x, [&](int threads) { mk::rope_3d_cpu(args, threads); },
         MG_CUDA([&](void* stream) { check_error(mk::rope_3d_cuda(args, stream), "rope_3d"); }));
}

std::string cpu_isa() { return mk::cpu_row_kernels().isa; }

void set_cpu_isa(const std::string& name) {
  const char* why = mk::set_cpu_isa(name.c_str());
  TORCH_CHECK(why == nullptr, "megagoku kernels: cannot use CPU ISA '", name, "': ", why);
}

bool built_with_cuda() {
#ifdef MEGAGOKU_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "megagoku fused RMSNorm, whole-width Q/K RMSNorm, modulated norm, gated residual and "
            "3D RoPE kernels (CPU, and CUDA when built with it)";
  m.def("rms_norm_forward", &rms_norm_forward,
        "rms_norm_forward(x[rows, cols], weight or None, eps, y[rows, cols], rstd[rows])");
  m.def("rms_norm_backward", &rms_norm_backward,
        "rms_norm_backward(dy, x, weight or None, rstd, dx, dweight[cols] or None)");
  m.def("whole_width_rms_norm_forward", &whole_width_rms_norm_forward,
        "whole_width_rms_norm_forward(x[tokens, heads, head_dim], weight[heads * head_dim] or "
        "None, eps, width, sum_sq[tokens] or None, y, rstd[tokens])");
  m.def("whole_width_rms_norm_backward", &whole_width_rms_norm_backward,
        "whole_width_rms_norm_backward(dy, x, weight or None, rstd, width, sum_gx or None, dx, "
        "dweight or None)");
  m.def("whole_width_partial_sums", &whole_width_partial_sums,
        "whole_width_partial_sums(a, weight or None, b, out[tokens]): sum of a * weight * b");
  m.def("modulated_norm_forward", &modulated_norm_forward,
        "modulated_norm_forward(x[rows, cols], kind, weight or None, eps, shift[samples, cols], "
        "scale[samples, cols], segment[rows], y, mean[rows] or None, rstd[rows])");
  m.def("modulated_norm_backward", &modulated_norm_backward,
        "modulated_norm_backward(dy, x, kind, weight or None, scale, segment, mean or None, rstd, "
        "dx, dshift, dscale, dweight or None)");
  m.def("gated_residual_forward", &gated_residual_forward,
        "gated_residual_forward(x[rows, cols], gate[samples, cols], out, segment[rows], y)");
  m.def("gated_residual_backward", &gated_residual_backward,
        "gated_residual_backward(dy, gate, out, segment, dout, dgate[samples, cols])");
  m.def("rope_3d", &rope_3d,
        "rope_3d(x, out, positions, inv_freq, pairs_t, pairs_h, inverse): out may be x");
  m.def("built_with_cuda", &built_with_cuda);
  m.def("cpu_isa", &cpu_isa, "the instruction set the CPU kernels run with");
  m.attr("STREAM_OUTPUT_BYTES") = mk::kStreamOutputBytes;
  m.def("set_cpu_isa", &set_cpu_isa, "run the CPU kernels with 'generic', 'avx2' or 'avx512'");
}
