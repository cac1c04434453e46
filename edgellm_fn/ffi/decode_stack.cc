// CPU XLA FFI handler of the decode layer stack (decode_stack.h): the per-op CPU twins run in
// order, and the nanobind module `_decode_stack`.
#include <cstdint>
#include <cstring>
#include <vector>

#include "decode_attention_cpu.h"
#include "decode_stack.h"
#include "ffi_capsule.h"
#include "gemv_cpu.h"
#include "nanobind/nanobind.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;

namespace edgellm::stack {
namespace {

ffi::Error StackDispatch(ffi::RemainingArgs args, ffi::RemainingRets rets, float eps, float scale,
                         int32_t activation, ffi::Span<const int32_t> windows, bool pdl) {
  (void)pdl;  // a CUDA launch option
  std::vector<Layer> layers;
  if (auto e = MakeLayers(&layers, args, rets, eps, scale, activation, windows); e.failure()) {
    return e;
  }
  // The CPU twin needs no split partials; zero them so the results are defined.
  for (size_t i : {kPartAcc, kPartMl}) {
    auto b = rets.get<ffi::AnyBuffer>(i);
    std::memset((*b)->untyped_data(), 0, (*b)->size_bytes());
  }
  for (const Layer& L : layers) {
    if (auto e = gemv::RunCpu(L.qkv); e.failure()) return e;
    if (auto e = attn::RunCpu(L.attn); e.failure()) return e;
    if (auto e = gemv::RunCpu(L.o); e.failure()) return e;
    if (auto e = gemv::RunCpu(L.gate_up); e.failure()) return e;
    if (auto e = gemv::RunCpu(L.down); e.failure()) return e;
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace edgellm::stack

XLA_FFI_DEFINE_HANDLER_SYMBOL(DecodeStackCpu, edgellm::stack::StackDispatch,
                              xla::ffi::Ffi::Bind()
                                  .RemainingArgs()                               // see .h
                                  .RemainingRets()                               // see .h
                                  .Attr<float>("eps")                            // eps
                                  .Attr<float>("scale")                          // scale
                                  .Attr<int32_t>("activation")                   // activation
                                  .Attr<xla::ffi::Span<const int32_t>>("windows")  // windows
                                  .Attr<bool>("pdl"));                           // pdl

#ifdef EDGELLM_WITH_CUDA
XLA_FFI_DECLARE_HANDLER_SYMBOL(DecodeStackCuda);
#endif

using edgellm::EncapsulateFfiHandler;

NB_MODULE(_decode_stack, m) {
  m.def("registrations", []() {
    nb::dict cpu;
    cpu["edgellm_decode_stack"] = EncapsulateFfiHandler(DecodeStackCpu);
    nb::dict platforms;
    platforms["cpu"] = cpu;
#ifdef EDGELLM_WITH_CUDA
    nb::dict cuda;
    cuda["edgellm_decode_stack"] = EncapsulateFfiHandler(DecodeStackCuda);
    platforms["CUDA"] = cuda;
#endif
    return platforms;
  }, "Handler capsules by platform: {'cpu': {target: capsule}, 'CUDA': {...} if built}.");
}
