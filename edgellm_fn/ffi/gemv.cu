// CUDA XLA FFI handler of the fused decode GEMV (see gemv.h for the math and
// gemv_kernels.cuh for the kernel). Launch work depends only on shapes:
// command-buffer compatible; no allocation, no synchronisation.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "gemv.h"
#include "gemv_kernels.cuh"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace edgellm::gemv {
namespace {

ffi::Error GemvDispatch(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer w,
                        ffi::AnyBuffer norm_weight, ffi::AnyBuffer bias, ffi::AnyBuffer residual,
                        ffi::Result<ffi::AnyBuffer> out, float eps, bool gated,
                        int32_t activation) {
  Plan p;
  if (auto e = MakePlan(&p, x, w, norm_weight, bias, residual, *out, eps, gated, activation);
      e.failure()) {
    return e;
  }
  if (auto e = CheckGpu(p); e.failure()) return e;
  return LaunchGemv(stream, p);
}

}  // namespace
}  // namespace edgellm::gemv

XLA_FFI_DEFINE_HANDLER_SYMBOL(GemvCuda, edgellm::gemv::GemvDispatch,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<xla::ffi::AnyBuffer>()      // x
                                  .Arg<xla::ffi::AnyBuffer>()      // w
                                  .Arg<xla::ffi::AnyBuffer>()      // norm_weight
                                  .Arg<xla::ffi::AnyBuffer>()      // bias
                                  .Arg<xla::ffi::AnyBuffer>()      // residual
                                  .Ret<xla::ffi::AnyBuffer>()      // out
                                  .Attr<float>("eps")              // eps
                                  .Attr<bool>("gated")             // gated
                                  .Attr<int32_t>("activation"),   // activation
                              {xla::ffi::Traits::kCmdBufferCompatible});
