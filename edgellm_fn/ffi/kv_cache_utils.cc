// CPU XLA FFI handlers for the KV-cache utilities (Edge-LLM's kvCacheUtils
// kernels), and the nanobind module `_kv_cache_utils` whose registrations()
// hands every handler (CPU, and CUDA when built with nvcc) to jax.ffi.
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "kv_cache_utils.h"
#include "ffi_capsule.h"
#include "nanobind/nanobind.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;

namespace edgellm::kv {
namespace {

// Copies every (layer, head) row of the table; T is the storage type of the
// dtype (the copy is bit-exact, so bf16 and f16 share uint16_t).
template <typename T>
ffi::Error CopyKvRowsImpl(const CopyTable& t) {
  const int32_t row = *t.batch_idx;  // host memory on CPU
  for (int l = 0; l < t.num_layers; ++l) {  // check every layer before copying anything
    if (row < 0 || row >= t.batch[l]) {
      return ffi::Error::InvalidArgument(
          "kv cache copy: batch_idx=" + std::to_string(row) + " (expected 0 <= batch_idx < " +
          std::to_string(t.batch[l]) + " = layers[" + std::to_string(l) + "] batch)");
    }
  }
  const size_t row_bytes = static_cast<size_t>(t.seq_len) * t.head_dim * sizeof(T);
  for (int l = 0; l < t.num_layers; ++l) {
    for (int h = 0; h < t.heads[l]; ++h) {
      int64_t cache_off, saved_off;
      RowOffsets(t, l, h, row, &cache_off, &saved_off);
      T* cache = static_cast<T*>(t.cache[l]) + cache_off;
      T* saved = static_cast<T*>(t.saved[l]) + saved_off;
      if (t.to_saved) {
        std::memcpy(saved, cache, row_bytes);
      } else {
        std::memcpy(cache, saved, row_bytes);
      }
    }
  }
  return ffi::Error::Success();
}

ffi::Error CopyKvRowsDispatch(ffi::DataType dtype, const CopyTable& t) {
  switch (dtype) {
    case ffi::DataType::F32:
      return CopyKvRowsImpl<float>(t);
    case ffi::DataType::F16:
    case ffi::DataType::BF16:
      return CopyKvRowsImpl<uint16_t>(t);
    default:
      return ffi::Error::InvalidArgument("kv cache dtype must be float32, float16 or bfloat16");
  }
}

// Copies the caches XLA did not alias into their results, then the rows.
ffi::Error RunPlan(const Plan& p) {
  for (int i = 0; i < p.num_unaliased; ++i) {
    std::memcpy(p.unaliased_dst[i], p.unaliased_src[i], p.unaliased_bytes[i]);
  }
  return CopyKvRowsDispatch(p.dtype, p.table);
}

ffi::Error SaveKvCacheLayerDispatch(ffi::AnyBuffer batch_idx, ffi::AnyBuffer cache,
                                    ffi::Result<ffi::AnyBuffer> saved, int32_t seq_len) {
  Plan p;
  if (ffi::Error e = PlanSaveLayer(&p, batch_idx, cache, *saved, seq_len); e.failure()) return e;
  return RunPlan(p);
}

ffi::Error InstantiateKvCacheLayerDispatch(ffi::AnyBuffer batch_idx, ffi::AnyBuffer cache,
                                           ffi::AnyBuffer saved, ffi::Result<ffi::AnyBuffer> out) {
  Plan p;
  if (ffi::Error e = PlanInstantiateLayer(&p, batch_idx, cache, saved, *out); e.failure()) {
    return e;
  }
  return RunPlan(p);
}

ffi::Error SaveKvCacheBatchedDispatch(ffi::AnyBuffer batch_idx, ffi::RemainingArgs layers,
                                      ffi::RemainingRets saved, int32_t seq_len) {
  Plan p;
  if (ffi::Error e = PlanSaveBatched(&p, batch_idx, layers, saved, seq_len); e.failure()) {
    return e;
  }
  return RunPlan(p);
}

ffi::Error InstantiateKvCacheBatchedDispatch(ffi::AnyBuffer batch_idx, ffi::RemainingArgs args,
                                             ffi::RemainingRets outs) {
  Plan p;
  if (ffi::Error e = PlanInstantiateBatched(&p, batch_idx, args, outs); e.failure()) return e;
  return RunPlan(p);
}

// out[i] = lengths[i] + (inc ? inc[i] : scalar_inc); out may alias lengths.
template <typename T>
void IncrementLengthsImpl(const T* lengths, const T* inc, T scalar_inc, T* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = lengths[i] + (inc != nullptr ? inc[i] : scalar_inc);
}

ffi::Error IncrementLengthsDispatch(ffi::AnyBuffer lengths, ffi::Result<ffi::AnyBuffer> out,
                                    int32_t inc) {
  if (ffi::Error e = CheckIncrement(lengths, nullptr, *out); e.failure()) return e;
  IncrementLengthsImpl<int32_t>(static_cast<const int32_t*>(lengths.untyped_data()), nullptr,
                                inc, static_cast<int32_t*>(out->untyped_data()),
                                lengths.element_count());
  return ffi::Error::Success();
}

ffi::Error IncrementLengthsByTensorDispatch(ffi::AnyBuffer lengths, ffi::AnyBuffer inc,
                                            ffi::Result<ffi::AnyBuffer> out) {
  if (ffi::Error e = CheckIncrement(lengths, &inc, *out); e.failure()) return e;
  IncrementLengthsImpl<int32_t>(static_cast<const int32_t*>(lengths.untyped_data()),
                                static_cast<const int32_t*>(inc.untyped_data()), 0,
                                static_cast<int32_t*>(out->untyped_data()),
                                lengths.element_count());
  return ffi::Error::Success();
}

}  // namespace
}  // namespace edgellm::kv

using namespace edgellm::kv;  // NOLINT: handler symbols below are extern "C".

XLA_FFI_DEFINE_HANDLER_SYMBOL(SaveKvCacheLayerCpu, SaveKvCacheLayerDispatch,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()        // batch_idx
                                  .Arg<ffi::AnyBuffer>()        // cache_layer
                                  .Ret<ffi::AnyBuffer>()        // saved
                                  .Attr<int32_t>("seq_len"));   // seq_len

XLA_FFI_DEFINE_HANDLER_SYMBOL(InstantiateKvCacheLayerCpu, InstantiateKvCacheLayerDispatch,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()    // batch_idx
                                  .Arg<ffi::AnyBuffer>()    // cache_layer
                                  .Arg<ffi::AnyBuffer>()    // saved
                                  .Ret<ffi::AnyBuffer>());  // cache_layer (aliased)

XLA_FFI_DEFINE_HANDLER_SYMBOL(SaveKvCacheBatchedCpu, SaveKvCacheBatchedDispatch,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()       // batch_idx
                                  .RemainingArgs()             // layers
                                  .RemainingRets()             // saved
                                  .Attr<int32_t>("seq_len"));  // seq_len

XLA_FFI_DEFINE_HANDLER_SYMBOL(InstantiateKvCacheBatchedCpu, InstantiateKvCacheBatchedDispatch,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // batch_idx
                                  .RemainingArgs()        // layers, then saved
                                  .RemainingRets());      // layers (aliased)

XLA_FFI_DEFINE_HANDLER_SYMBOL(IncrementLengthsCpu, IncrementLengthsDispatch,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()   // lengths
                                  .Ret<ffi::AnyBuffer>()   // lengths (aliased)
                                  .Attr<int32_t>("inc"));  // inc

XLA_FFI_DEFINE_HANDLER_SYMBOL(IncrementLengthsByTensorCpu, IncrementLengthsByTensorDispatch,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()    // lengths
                                  .Arg<ffi::AnyBuffer>()    // inc
                                  .Ret<ffi::AnyBuffer>());  // lengths (aliased)

#ifdef EDGELLM_WITH_CUDA
XLA_FFI_DECLARE_HANDLER_SYMBOL(SaveKvCacheLayerCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(InstantiateKvCacheLayerCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(SaveKvCacheBatchedCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(InstantiateKvCacheBatchedCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(IncrementLengthsCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(IncrementLengthsByTensorCuda);
#endif

using edgellm::EncapsulateFfiHandler;

NB_MODULE(_kv_cache_utils, m) {
  m.attr("MAX_BATCHED_LAYERS") = edgellm::kv::kMaxLayers;
  m.def("registrations", []() {
    nb::dict cpu;
    cpu["edgellm_save_kv_cache_layer"] = EncapsulateFfiHandler(SaveKvCacheLayerCpu);
    cpu["edgellm_instantiate_kv_cache_layer"] = EncapsulateFfiHandler(InstantiateKvCacheLayerCpu);
    cpu["edgellm_save_kv_cache_batched"] = EncapsulateFfiHandler(SaveKvCacheBatchedCpu);
    cpu["edgellm_instantiate_kv_cache_batched"] =
        EncapsulateFfiHandler(InstantiateKvCacheBatchedCpu);
    cpu["edgellm_increment_lengths"] = EncapsulateFfiHandler(IncrementLengthsCpu);
    cpu["edgellm_increment_lengths_by_tensor"] =
        EncapsulateFfiHandler(IncrementLengthsByTensorCpu);
    nb::dict platforms;
    platforms["cpu"] = cpu;
#ifdef EDGELLM_WITH_CUDA
    nb::dict cuda;
    cuda["edgellm_save_kv_cache_layer"] = EncapsulateFfiHandler(SaveKvCacheLayerCuda);
    cuda["edgellm_instantiate_kv_cache_layer"] =
        EncapsulateFfiHandler(InstantiateKvCacheLayerCuda);
    cuda["edgellm_save_kv_cache_batched"] = EncapsulateFfiHandler(SaveKvCacheBatchedCuda);
    cuda["edgellm_instantiate_kv_cache_batched"] =
        EncapsulateFfiHandler(InstantiateKvCacheBatchedCuda);
    cuda["edgellm_increment_lengths"] = EncapsulateFfiHandler(IncrementLengthsCuda);
    cuda["edgellm_increment_lengths_by_tensor"] =
        EncapsulateFfiHandler(IncrementLengthsByTensorCuda);
    platforms["CUDA"] = cuda;
#endif
    return platforms;
  }, "Handler capsules by platform: {'cpu': {target: capsule}, 'CUDA': {...} if built}.");
}
