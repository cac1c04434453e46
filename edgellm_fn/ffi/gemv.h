// The fused decode GEMV (shared by the CPU and CUDA handlers): shape checks
// and the plan both execute.
//
//   h   = norm ? rms_norm(x, norm_weight, eps) : x          x: [M, K]
//   y   = h @ w.T  (f32 accumulate)                          w: [N, K] (out, in)
//   y  += bias                                               bias: [N] or empty
//   y   = gated ? act(y[:, :N/2]) * y[:, N/2:] : y
//   out = residual + y                                       residual: [M, N_out] or empty
//
// Rounding follows the reference (llama.py) op by op: the norm's output, the
// product, the bias sum, the activation and the residual sum are each rounded
// to the model dtype; an f32 output (logits) skips the rounding of y.
#pragma once

#include <cstdint>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace edgellm::gemv {

namespace ffi = xla::ffi;

struct Plan {
  ffi::DataType dtype;      // x, w, norm_weight, bias, residual
  ffi::DataType out_dtype;  // dtype or F32
  int64_t m = 0, k = 0, n = 0, n_out = 0;
  const void* x = nullptr;
  const void* w = nullptr;
  const void* norm_weight = nullptr;  // null: no norm
  const void* bias = nullptr;         // null: no bias
  const void* residual = nullptr;     // null: no residual
  void* out = nullptr;
  float eps = 0.0f;
  bool gated = false;
  int32_t activation = 0;
};

inline bool IsFloat(ffi::DataType t) {
  return t == ffi::DataType::F32 || t == ffi::DataType::BF16 || t == ffi::DataType::F16;
}

inline ffi::Error Bad(const std::string& what) {
  return ffi::Error::InvalidArgument("edgellm_gemv: " + what);
}

inline std::string Dims(const ffi::AnyBuffer& b) {
  std::string s = "[";
  auto d = b.dimensions();
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// Validates every buffer against x [M, K] and w [N, K]; empty optional
// buffers (element_count 0) mean "absent".
inline ffi::Error MakePlan(Plan* p, const ffi::AnyBuffer& x, const ffi::AnyBuffer& w,
                           const ffi::AnyBuffer& norm_weight, const ffi::AnyBuffer& bias,
                           const ffi::AnyBuffer& residual, ffi::AnyBuffer& out, float eps,
                           bool gated, int32_t activation) {
  if (x.dimensions().size() != 2) return Bad("x " + Dims(x) + " (expected [M, K])");
  if (w.dimensions().size() != 2) return Bad("w " + Dims(w) + " (expected [N, K])");
  p->dtype = x.element_type();
  if (!IsFloat(p->dtype) || w.element_type() != p->dtype) {
    return Bad("x and w must share one float dtype");
  }
  p->m = x.dimensions()[0];
  p->k = x.dimensions()[1];
  p->n = w.dimensions()[0];
  if (w.dimensions()[1] != p->k) return Bad("w " + Dims(w) + " (expected K = x's " +
                                            std::to_string(p->k) + ")");
  if (gated && p->n % 2) return Bad("gated needs an even N, got " + std::to_string(p->n));
  p->n_out = gated ? p->n / 2 : p->n;
  p->out_dtype = out.element_type();
  if (out.dimensions().size() != 2 || out.dimensions()[0] != p->m ||
      out.dimensions()[1] != p->n_out) {
    return Bad("out " + Dims(out) + " (expected [M, N_out])");
  }
  if (p->out_dtype != p->dtype && p->out_dtype != ffi::DataType::F32) {
    return Bad("out dtype must be x's dtype or float32");
  }
  auto optional = [&](const ffi::AnyBuffer& b, int64_t rows, int64_t cols, const char* name,
                      const void** ptr) -> ffi::Error {
    if (b.element_count() == 0) return ffi::Error::Success();
    const bool vec = rows == 0;
    auto d = b.dimensions();
    const bool ok = vec ? (d.size() == 1 && d[0] == cols)
                        : (d.size() == 2 && d[0] == rows && d[1] == cols);
    if (!ok || b.element_type() != p->dtype) {
      return Bad(std::string(name) + " " + Dims(b) + " has the wrong shape or dtype");
    }
    *ptr = b.untyped_data();
    return ffi::Error::Success();
  };
  if (auto e = optional(norm_weight, 0, p->k, "norm_weight", &p->norm_weight); e.failure()) {
    return e;
  }
  if (auto e = optional(bias, 0, p->n, "bias", &p->bias); e.failure()) return e;
  if (auto e = optional(residual, p->m, p->n_out, "residual", &p->residual); e.failure()) {
    return e;
  }
  if (p->residual && p->out_dtype != p->dtype) return Bad("a residual needs out dtype == x's");
  p->x = x.untyped_data();
  p->w = w.untyped_data();
  p->out = out.untyped_data();
  p->eps = eps;
  p->gated = gated;
  p->activation = activation;
  return ffi::Error::Success();
}

}  // namespace edgellm::gemv
