// CUDA XLA FFI handler of decode attention (see decode_attention.h; the kernels are in
// decode_attention_kernels.cuh). Command-buffer compatible: no allocation, no synchronisation.
#include <cuda_runtime.h>

#include <cstdint>

#include "decode_attention.h"
#include "decode_attention_kernels.cuh"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace edgellm::attn {
namespace {

ffi::Error AttendDispatch(cudaStream_t stream, ffi::AnyBuffer qkv, ffi::AnyBuffer k,
                          ffi::AnyBuffer v, ffi::AnyBuffer rope, ffi::AnyBuffer start,
                          ffi::AnyBuffer ctx, ffi::AnyBuffer q_norm, ffi::AnyBuffer k_norm,
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
  if (auto e = CheckGpu(p); e.failure()) return e;
  return LaunchAttention(stream, p, static_cast<size_t>(k.size_bytes()));
}

}  // namespace
}  // namespace edgellm::attn

XLA_FFI_DEFINE_HANDLER_SYMBOL(DecodeAttentionCuda, edgellm::attn::AttendDispatch,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
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
                                  .Attr<int32_t>("window"),     // window
                              {xla::ffi::Traits::kCmdBufferCompatible});
