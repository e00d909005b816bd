// torch bindings of the fused kernels: check the tensors, fill the launch structs of
// csrc/kernels/api.h, and dispatch to the CPU or (when built with it) the CUDA kernels.
// The autograd Functions around these live in megagoku/ops/fused.py.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <string>
#include <tuple>

#include "../cpu/isa.h"
#include "../kernels/api.h"

#ifdef MEGAGOKU_WITH_CUDA
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
      TORCH_CHECK(t.is_cuda(), "megagoku kernels: float16 runs on CUDA only (use bfloat16 on the CPU)");
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

void* current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
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
  m.doc() = "megagoku fused RMSNorm and 3D RoPE kernels (CPU, and CUDA when built with it)";
  m.def("rms_norm_forward", &rms_norm_forward,
        "rms_norm_forward(x[rows, cols], weight or None, eps, y[rows, cols], rstd[rows])");
  m.def("rms_norm_backward", &rms_norm_backward,
        "rms_norm_backward(dy, x, weight or None, rstd, dx, dweight[cols] or None)");
  m.def("rope_3d", &rope_3d,
        "rope_3d(x, out, positions, inv_freq, pairs_t, pairs_h, inverse): out may be x");
  m.def("built_with_cuda", &built_with_cuda);
  m.def("cpu_isa", &cpu_isa, "the instruction set the CPU kernels run with");
  m.attr("STREAM_OUTPUT_BYTES") = mk::kStreamOutputBytes;
  m.def("set_cpu_isa", &set_cpu_isa, "run the CPU kernels with 'generic', 'avx2' or 'avx512'");
}
