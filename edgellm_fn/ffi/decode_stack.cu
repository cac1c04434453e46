// CUDA XLA FFI handler of the decode layer stack (decode_stack.h): five launches per layer (the
// attention op is two kernels), all but the first as programmatic dependent launches, so every
// GEMV's weight loads overlap the previous kernel's tail. Command-buffer compatible: the launch
// sequence depends only on shapes; no allocation, no synchronisation.
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "decode_attention_kernels.cuh"
#include "decode_stack.h"
#include "gemv_kernels.cuh"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace edgellm::stack {
namespace {

ffi::Error StackDispatch(cudaStream_t stream, ffi::RemainingArgs args, ffi::RemainingRets rets,
                         float eps, float scale, int32_t activation,
                         ffi::Span<const int32_t> windows, bool pdl) {
  std::vector<Layer> layers;
  if (auto e = MakeLayers(&layers, args, rets, eps, scale, activation, windows); e.failure()) {
    return e;
  }
  for (Layer& L : layers) {
    for (gemv::Plan* p : {&L.qkv, &L.o, &L.gate_up, &L.down}) {
      if (auto e = gemv::CheckGpu(*p); e.failure()) return Bad(e.message());
      p->pdl = pdl;
    }
    if (auto e = attn::CheckGpu(L.attn); e.failure()) return Bad(e.message());
    L.attn.pdl = pdl;
  }
  layers.front().qkv.pdl = false;  // the first kernel follows XLA's work, not ours
  for (const Layer& L : layers) {
    if (auto e = gemv::LaunchGemv(stream, L.qkv); e.failure()) return e;
    if (auto e = attn::LaunchAttention(stream, L.attn, L.cache_bytes); e.failure()) return e;
    if (auto e = gemv::LaunchGemv(stream, L.o); e.failure()) return e;
    if (auto e = gemv::LaunchGemv(stream, L.gate_up); e.failure()) return e;
    if (auto e = gemv::LaunchGemv(stream, L.down); e.failure()) return e;
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace edgellm::stack

XLA_FFI_DEFINE_HANDLER_SYMBOL(DecodeStackCuda, edgellm::stack::StackDispatch,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .RemainingArgs()                               // see .h
                                  .RemainingRets()                               // see .h
                                  .Attr<float>("eps")                            // eps
                                  .Attr<float>("scale")                          // scale
                                  .Attr<int32_t>("activation")                   // activation
                                  .Attr<xla::ffi::Span<const int32_t>>("windows")  // windows
                                  .Attr<bool>("pdl"),                            // pdl
                              {xla::ffi::Traits::kCmdBufferCompatible});
