// CPU XLA FFI handler of the fused decode GEMV (the CPU twin of gemv.cu: the
// same plan, the same rounding points), and the nanobind module `_gemv`.
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "gemv.h"
#include "gemv_cpu.h"
#include "ffi_capsule.h"
#include "nanobind/nanobind.h"
#include "numerics.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;

namespace edgellm::gemv {
namespace {

ffi::Error GemvDispatch(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer norm_weight,
                        ffi::AnyBuffer bias, ffi::AnyBuffer residual,
                        ffi::Result<ffi::AnyBuffer> out, float eps, bool gated,
                        int32_t activation) {
  Plan p;
  if (auto e = MakePlan(&p, x, w, norm_weight, bias, residual, *out, eps, gated, activation);
      e.failure()) {
    return e;
  }
  return RunCpu(p);
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
