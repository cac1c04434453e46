// CPU XLA FFI handler of decode attention (the CPU twin of decode_attention.cu:
// same plan, same rounding points, one split), and the nanobind module
// `_decode_attention`.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "decode_attention.h"
#include "decode_attention_cpu.h"
#include "ffi_capsule.h"
#include "nanobind/nanobind.h"
#include "numerics.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;

namespace edgellm::attn {
namespace {

ffi::Error AttendDispatch(ffi::AnyBuffer qkv, ffi::AnyBuffer k, ffi::AnyBuffer v,
                          ffi::AnyBuffer rope, ffi::AnyBuffer start, ffi::AnyBuffer ctx,
                          ffi::AnyBuffer q_norm, ffi::AnyBuffer k_norm,
                          ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> k_out,
                          ffi::Result<ffi::AnyBuffer> v_out, ffi::Result<ffi::AnyBuffer> part_acc,
                          ffi::Result<ffi::AnyBuffer> part_ml, float eps, float scale,
                          int32_t window) {
  Plan p;
  if (auto e = MakePlan(&p, qkv, k, v, rope, start, ctx, q_norm, k_norm, *out, *k_out, *v_out,
                        *part_acc, *part_ml, eps, scale, window);
      e.failure()) {
    return e;
  }
  // The CPU twin needs no split partials; zero them so the results are defined.
  std::memset(p.part_acc, 0, part_acc->size_bytes());
  std::memset(p.part_ml, 0, part_ml->size_bytes());
  return RunCpu(p);
}

}  // namespace
}  // namespace edgellm::attn

XLA_FFI_DEFINE_HANDLER_SYMBOL(DecodeAttentionCpu, edgellm::attn::AttendDispatch,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::AnyBuffer>()   // qkv
                                  .Arg<xla::ffi::AnyBuffer>()   // k_cache
                                  .Arg<xla::ffi::AnyBuffer>()   // v_cache
                                  .Arg<xla::ffi::AnyBuffer>()   // rope
                                  .Arg<xla::ffi::AnyBuffer>()   // start
                                  .Arg<xla::ffi::AnyBuffer>()   // ctx
                                  .Arg<xla::ffi::AnyBuffer>()   // q_norm
                                  .Arg<xla::ffi::AnyBuffer>()   // k_norm
                                  .Ret<xla::ffi::AnyBuffer>()   // out
                                  .Ret<xla::ffi::AnyBuffer>()   // k_cache (aliased)
                                  .Ret<xla::ffi::AnyBuffer>()   // v_cache (aliased)
                                  .Ret<xla::ffi::AnyBuffer>()   // part_acc
                                  .Ret<xla::ffi::AnyBuffer>()   // part_ml
                                  .Attr<float>("eps")           // eps
                                  .Attr<float>("scale")         // scale
                                  .Attr<int32_t>("window"));  // window

#ifdef EDGELLM_WITH_CUDA
XLA_FFI_DECLARE_HANDLER_SYMBOL(DecodeAttentionCuda);
#endif

using edgellm::EncapsulateFfiHandler;

NB_MODULE(_decode_attention, m) {
  m.def("registrations", []() {
    nb::dict cpu;
    cpu["edgellm_decode_attention"] = EncapsulateFfiHandler(DecodeAttentionCpu);
    nb::dict platforms;
    platforms["cpu"] = cpu;
#ifdef EDGELLM_WITH_CUDA
    nb::dict cuda;
    cuda["edgellm_decode_attention"] = EncapsulateFfiHandler(DecodeAttentionCuda);
    platforms["CUDA"] = cuda;
#endif
    return platforms;
  }, "Handler capsules by platform: {'cpu': {target: capsule}, 'CUDA': {...} if built}.");
}
