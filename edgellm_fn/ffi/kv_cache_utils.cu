// CUDA XLA FFI handlers for the KV-cache utilities. Each handler launches the
// same work every call on XLA's stream, never allocates or synchronizes, and
// is declared command-buffer compatible so XLA may put it in its CUDA graphs.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kv_cache_utils.h"
#include "xla/ffi/api/ffi.h"

#if CUDART_VERSION < 12010
#error "kv_cache_utils.cu passes a 7 KiB kernel parameter table: needs CUDA >= 12.1"
#endif

namespace ffi = xla::ffi;

namespace edgellm::kv {
namespace {

constexpr int kThreads = 256;
constexpr int kVecPerThread = 4;  // 16-byte vectors each thread copies per row

// Grid (x: chunks of a row, y: head, z: layer). A row is one contiguous run of
// seq_len * D elements in both the cache and the saved array; rows are copied
// with 16-byte vectors when both ends are 16-byte aligned.
template <typename T>
__global__ void CopyKvRowsKernel(const __grid_constant__ CopyTable t) {
  const int layer = blockIdx.z;
  const int head = blockIdx.y;
  if (layer >= t.num_layers || head >= t.heads[layer]) return;
  // The row is a device buffer (one graph serves every row). The Python wrapper checks a
  // concrete row; a traced one out of range copies nothing: never an out-of-bounds access.
  const int32_t row = *t.batch_idx;
  if (row < 0 || row >= t.batch[layer] || t.seq_len < 1 || t.seq_len > t.cap[layer]) {
    return;
  }
  int64_t cache_off, saved_off;
  RowOffsets(t, layer, head, row, &cache_off, &saved_off);
  T* cache = static_cast<T*>(t.cache[layer]) + cache_off;
  T* saved = static_cast<T*>(t.saved[layer]) + saved_off;
  const T* src = t.to_saved ? cache : saved;
  T* dst = t.to_saved ? saved : cache;
  const int64_t n = static_cast<int64_t>(t.seq_len) * t.head_dim;
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const auto bits = reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst) |
                    static_cast<uintptr_t>(bytes);
  if ((bits & 15) == 0) {
    // All of a thread's loads are issued before its stores (the arrays never overlap), so
    // kVecPerThread 16-byte loads per thread are in flight at once.
    const uint4* __restrict__ s = reinterpret_cast<const uint4*>(src);
    uint4* __restrict__ d = reinterpret_cast<uint4*>(dst);
    const int64_t nv = bytes / 16;
    for (; i < nv; i += stride * kVecPerThread) {
      uint4 v[kVecPerThread];
#pragma unroll
      for (int u = 0; u < kVecPerThread; ++u) {
        if (i + u * stride < nv) v[u] = s[i + u * stride];
      }
#pragma unroll
      for (int u = 0; u < kVecPerThread; ++u) {
        if (i + u * stride < nv) d[i + u * stride] = v[u];
      }
    }
  } else {
    for (; i < n; i += stride) dst[i] = src[i];
  }
}

template <typename T>
ffi::Error CopyKvRowsImpl(cudaStream_t stream, const CopyTable& t) {
  const int64_t row_bytes = static_cast<int64_t>(t.seq_len) * t.head_dim * sizeof(T);
  const int64_t per_block = static_cast<int64_t>(kThreads) * kVecPerThread * 16;
  const int64_t blocks_x = (row_bytes + per_block - 1) / per_block;
  const dim3 grid(static_cast<unsigned>(blocks_x < 1 ? 1 : blocks_x),
                  static_cast<unsigned>(t.max_heads), static_cast<unsigned>(t.num_layers));
  CopyKvRowsKernel<T><<<grid, kThreads, 0, stream>>>(t);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) {
    return ffi::Error::Internal(std::string("kv cache copy kernel launch failed: ") +
                                cudaGetErrorString(err));
  }
  return ffi::Error::Success();
}

ffi::Error CopyKvRowsDispatch(cudaStream_t stream, ffi::DataType dtype, const CopyTable& t) {
  switch (dtype) {
    case ffi::DataType::F32:
      return CopyKvRowsImpl<float>(stream, t);
    case ffi::DataType::F16:
    case ffi::DataType::BF16:
      return CopyKvRowsImpl<uint16_t>(stream, t);
    default:
      return ffi::Error::InvalidArgument("kv cache dtype must be float32, float16 or bfloat16");
  }
}

// Copies the caches XLA did not alias into their results, then the rows.
ffi::Error RunPlan(cudaStream_t stream, const Plan& p) {
  for (int i = 0; i < p.num_unaliased; ++i) {
    cudaMemcpyAsync(p.unaliased_dst[i], p.unaliased_src[i], p.unaliased_bytes[i],
                    cudaMemcpyDeviceToDevice, stream);
    if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) {
      return ffi::Error::Internal(std::string("kv cache copy failed: ") +
                                  cudaGetErrorString(err));
    }
  }
  return CopyKvRowsDispatch(stream, p.dtype, p.table);
}

ffi::Error SaveKvCacheLayerDispatch(cudaStream_t stream, ffi::AnyBuffer batch_idx,
                                    ffi::AnyBuffer cache, ffi::Result<ffi::AnyBuffer> saved,
                                    int32_t seq_len) {
  Plan p;
  if (ffi::Error e = PlanSaveLayer(&p, batch_idx, cache, *saved, seq_len); e.failure()) return e;
  return RunPlan(stream, p);
}

ffi::Error InstantiateKvCacheLayerDispatch(cudaStream_t stream, ffi::AnyBuffer batch_idx,
                                           ffi::AnyBuffer cache, ffi::AnyBuffer saved,
                                           ffi::Result<ffi::AnyBuffer> out) {
  Plan p;
  if (ffi::Error e = PlanInstantiateLayer(&p, batch_idx, cache, saved, *out); e.failure()) {
    return e;
  }
  return RunPlan(stream, p);
}

ffi::Error SaveKvCacheBatchedDispatch(cudaStream_t stream, ffi::AnyBuffer batch_idx,
                                      ffi::RemainingArgs layers, ffi::RemainingRets saved,
                                      int32_t seq_len) {
  Plan p;
  if (ffi::Error e = PlanSaveBatched(&p, batch_idx, layers, saved, seq_len); e.failure()) {
    return e;
  }
  return RunPlan(stream, p);
}

ffi::Error InstantiateKvCacheBatchedDispatch(cudaStream_t stream, ffi::AnyBuffer batch_idx,
                                             ffi::RemainingArgs args, ffi::RemainingRets outs) {
  Plan p;
  if (ffi::Error e = PlanInstantiateBatched(&p, batch_idx, args, outs); e.failure()) return e;
  return RunPlan(stream, p);
}

// out[i] = lengths[i] + (inc ? inc[i] : scalar_inc); out may alias lengths.
template <typename T>
__global__ void IncrementLengthsKernel(const T* lengths, const T* inc, T scalar_inc, T* out,
                                       int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    out[i] = lengths[i] + (inc != nullptr ? inc[i] : scalar_inc);
  }
}

template <typename T>
ffi::Error IncrementLengthsImpl(cudaStream_t stream, const ffi::AnyBuffer& lengths,
                                const void* inc, T scalar_inc, ffi::AnyBuffer& out) {
  const int64_t n = static_cast<int64_t>(lengths.element_count());
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  IncrementLengthsKernel<T><<<static_cast<unsigned>(blocks < 1 ? 1 : blocks), kThreads, 0,
                              stream>>>(static_cast<const T*>(lengths.untyped_data()),
                                        static_cast<const T*>(inc), scalar_inc,
                                        static_cast<T*>(out.untyped_data()), n);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) {
    return ffi::Error::Internal(std::string("increment_lengths kernel launch failed: ") +
                                cudaGetErrorString(err));
  }
  return ffi::Error::Success();
}

ffi::Error IncrementLengthsDispatch(cudaStream_t stream, ffi::AnyBuffer lengths,
                                    ffi::Result<ffi::AnyBuffer> out, int32_t inc) {
  if (ffi::Error e = CheckIncrement(lengths, nullptr, *out); e.failure()) return e;
  return IncrementLengthsImpl<int32_t>(stream, lengths, nullptr, inc, *out);
}

ffi::Error IncrementLengthsByTensorDispatch(cudaStream_t stream, ffi::AnyBuffer lengths,
                                            ffi::AnyBuffer inc,
                                            ffi::Result<ffi::AnyBuffer> out) {
  if (ffi::Error e = CheckIncrement(lengths, &inc, *out); e.failure()) return e;
  return IncrementLengthsImpl<int32_t>(stream, lengths, inc.untyped_data(), 0, *out);
}

}  // namespace
}  // namespace edgellm::kv

using namespace edgellm::kv;  // NOLINT: handler symbols below are extern "C".

XLA_FFI_DEFINE_HANDLER_SYMBOL(SaveKvCacheLayerCuda, SaveKvCacheLayerDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()       // batch_idx
                                  .Arg<ffi::AnyBuffer>()       // cache_layer
                                  .Ret<ffi::AnyBuffer>()       // saved
                                  .Attr<int32_t>("seq_len"),   // seq_len
                              {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(InstantiateKvCacheLayerCuda, InstantiateKvCacheLayerDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()   // batch_idx
                                  .Arg<ffi::AnyBuffer>()   // cache_layer
                                  .Arg<ffi::AnyBuffer>()   // saved
                                  .Ret<ffi::AnyBuffer>(),  // cache_layer (aliased)
                              {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(SaveKvCacheBatchedCuda, SaveKvCacheBatchedDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()       // batch_idx
                                  .RemainingArgs()             // layers
                                  .RemainingRets()             // saved
                                  .Attr<int32_t>("seq_len"),   // seq_len
                              {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(InstantiateKvCacheBatchedCuda, InstantiateKvCacheBatchedDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()  // batch_idx
                                  .RemainingArgs()        // layers, then saved
                                  .RemainingRets(),       // layers (aliased)
                              {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(IncrementLengthsCuda, IncrementLengthsDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()  // lengths
                                  .Ret<ffi::AnyBuffer>()  // lengths (aliased)
                                  .Attr<int32_t>("inc"),  // inc
                              {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(IncrementLengthsByTensorCuda, IncrementLengthsByTensorDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()  // lengths
                                  .Arg<ffi::AnyBuffer>()  // inc
                                  .Ret<ffi::AnyBuffer>(),  // lengths (aliased)
                              {ffi::Traits::kCmdBufferCompatible});
