// CPU XLA FFI handler of the fused decode GEMV (the CPU twin of gemv.cu: the
// same plan, the same rounding points), and the nanobind module `_gemv`.
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "gemv.h"
#include "ffi_capsule.h"
#include "nanobind/nanobind.h"
#include "numerics.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;

namespace edgellm::gemv {
namespace {

using num::Bf16;
using num::F16;
using num::FromFloat;
using num::Round;
using num::ToFloat;

template <typename T, typename OutT>
ffi::Error GemvImpl(const Plan& p) {
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.w);
  const T* nw = static_cast<const T*>(p.norm_weight);
  const T* bias = static_cast<const T*>(p.bias);
  const T* res = static_cast<const T*>(p.residual);
  OutT* out = static_cast<OutT*>(p.out);
  constexpr bool kF32Out = std::is_same_v<OutT, float> && !std::is_same_v<T, float>;
  std::vector<float> h(static_cast<size_t>(p.k));
  std::vector<float> y(static_cast<size_t>(p.n));
  for (int64_t m = 0; m < p.m; ++m) {
    const T* xm = x + m * p.k;
    if (nw) {
      float ssf = 0.0f;
      for (int64_t k = 0; k < p.k; ++k) {
        const float v = ToFloat(xm[k]);
        ssf += v * v;
      }
      const float r = 1.0f / std::sqrt(ssf / static_cast<float>(p.k) + p.eps);
      for (int64_t k = 0; k < p.k; ++k) {
        h[k] = Round<T>(Round<T>(ToFloat(xm[k]) * r) * ToFloat(nw[k]));
      }
    } else {
      for (int64_t k = 0; k < p.k; ++k) h[k] = ToFloat(xm[k]);
    }
    for (int64_t n = 0; n < p.n; ++n) {
      const T* wn = w + n * p.k;
      float acc = 0.0f;
      for (int64_t k = 0; k < p.k; ++k) acc += h[k] * ToFloat(wn[k]);
      y[n] = kF32Out ? acc : Round<T>(acc);
      if (bias) y[n] = kF32Out ? y[n] + ToFloat(bias[n]) : Round<T>(y[n] + ToFloat(bias[n]));
    }
    for (int64_t j = 0; j < p.n_out; ++j) {
      float v = y[j];
      if (p.gated) v = Round<T>(num::Activate<T>(p.activation, y[j]) * y[p.n_out + j]);
      if (res) v = Round<T>(ToFloat(res[m * p.n_out + j]) + v);
      out[m * p.n_out + j] = FromFloat<OutT>(v);
    }
  }
  return ffi::Error::Success();
}

template <typename T>
ffi::Error GemvOut(const Plan& p) {
  if (p.out_dtype == ffi::DataType::F32) return GemvImpl<T, float>(p);
  return GemvImpl<T, T>(p);
}

ffi::Error GemvDispatch(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer norm_weight,
                        ffi::AnyBuffer bias, ffi::AnyBuffer residual,
                        ffi::Result<ffi::AnyBuffer> out, float eps, bool gated,
                        int32_t activation) {
  Plan p;
  if (auto e = MakePlan(&p, x, w, norm_weight, bias, residual, *out, eps, gated, activation);
      e.failure()) {
    return e;
  }
  switch (p.dtype) {
    case ffi::DataType::F32:
      return GemvImpl<float, float>(p);
    case ffi::DataType::BF16:
      return GemvOut<Bf16>(p);
    case ffi::DataType::F16:
      return GemvOut<F16>(p);
    default:
      return Bad("unsupported dtype");
  }
}

}  // namespace
}  // namespace edgellm::gemv

XLA_FFI_DEFINE_HANDLER_SYMBOL(GemvCpu, edgellm::gemv::GemvDispatch,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::AnyBuffer>()      // x
                                  .Arg<xla::ffi::AnyBuffer>()      // w
                                  .Arg<xla::ffi::AnyBuffer>()      // norm_weight
                                  .Arg<xla::ffi::AnyBuffer>()      // bias
                                  .Arg<xla::ffi::AnyBuffer>()      // residual
                                  .Ret<xla::ffi::AnyBuffer>()      // out
                                  .Attr<float>("eps")              // eps
                                  .Attr<bool>("gated")             // gated
                                  .Attr<int32_t>("activation"));  // activation

#ifdef EDGELLM_WITH_CUDA
XLA_FFI_DECLARE_HANDLER_SYMBOL(GemvCuda);
#endif

using edgellm::EncapsulateFfiHandler;

NB_MODULE(_gemv, m) {
  m.def("registrations", []() {
    nb::dict cpu;
    cpu["edgellm_gemv"] = EncapsulateFfiHandler(GemvCpu);
    nb::dict platforms;
    platforms["cpu"] = cpu;
#ifdef EDGELLM_WITH_CUDA
    nb::dict cuda;
    cuda["edgellm_gemv"] = EncapsulateFfiHandler(GemvCuda);
    platforms["CUDA"] = cuda;
#endif
    return platforms;
  }, "Handler capsules by platform: {'cpu': {target: capsule}, 'CUDA': {...} if built}.");
}
