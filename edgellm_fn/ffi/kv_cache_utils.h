// Shared by the CPU (kv_cache_utils.cc) and CUDA (kv_cache_utils.cu) handlers:
// the by-value layer table one copy launch works from, and the checks that build
// it from FFI buffers. The Python wrappers check the same things first with
// friendlier messages; these checks are the second line of defence.
//
// KV layout: per attention layer separate k and v arrays, each
//   cache [B, Hkv, KVcap, D]   (one row per batch entry)
//   saved [Hkv, seq_len, D]    (one row, the first seq_len positions)
// Saving row b copies, for every head h, the contiguous run
// cache[b, h, 0:seq_len, :] (seq_len * D elements) to saved[h, :, :];
// instantiating copies it back.
#ifndef EDGELLM_FN_FFI_KV_CACHE_UTILS_H_
#define EDGELLM_FN_FFI_KV_CACHE_UTILS_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace edgellm::kv {

namespace ffi = xla::ffi;

// Most arrays (k and v of every layer) one batched call may copy. The table is
// passed to the kernel by value, so no device memory is allocated per call:
// 256 entries take 7 KiB of kernel parameters, within the 32 KiB that CUDA >= 12.1
// allows on sm_70 and newer. Keep in sync with MAX_BATCHED_LAYERS in Python
// (exported by the nanobind module, so Python reads this value).
inline constexpr int kMaxLayers = 256;

struct CopyTable {
  void* cache[kMaxLayers];   // [B, Hkv, cap, D] of each layer
  void* saved[kMaxLayers];   // [Hkv, seq_len, D] of each layer
  int32_t batch[kMaxLayers]; // B of each layer
  int32_t heads[kMaxLayers]; // Hkv of each layer
  int32_t cap[kMaxLayers];   // KVcap of each layer
  int32_t num_layers;
  int32_t max_heads;
  int32_t head_dim;
  // Row to copy: a buffer (host memory for the CPU handler, device memory for the CUDA one),
  // so one executable serves every row; each handler checks it where it can read it.
  const int32_t* batch_idx;
  int32_t seq_len;
  int32_t to_saved;  // 1: cache -> saved (save); 0: saved -> cache (instantiate)
};

inline std::string Where(const char* op, const char* arg, size_t i) {
  return std::string(op) + ": " + arg + "[" + std::to_string(i) + "]";
}

// Checks that `cache` is [B, Hkv, cap, D] and `saved` is [Hkv, seq_len, D] of
// the same dtype as layer 0, and appends the pair to `t`.
inline ffi::Error AddLayer(CopyTable* t, const char* op, size_t i, const ffi::AnyBuffer& cache,
                           void* cache_data, const ffi::AnyBuffer& saved, ffi::DataType dtype) {
  if (t->num_layers >= kMaxLayers) {
    return ffi::Error::InvalidArgument(std::string(op) + ": " + std::to_string(i + 1) +
                                       " layers (expected at most " + std::to_string(kMaxLayers) +
                                       "); split the layers over several calls");
  }
  auto c = cache.dimensions();
  auto s = saved.dimensions();
  if (c.size() != 4) {
    return ffi::Error::InvalidArgument(Where(op, "cache", i) + " has rank " +
                                       std::to_string(c.size()) +
                                       " (expected 4: [B, Hkv, KVcap, D])");
  }
  if (s.size() != 3 || s[0] != c[1] || s[2] != c[3]) {
    return ffi::Error::InvalidArgument(Where(op, "saved", i) +
                                       " shape does not match its cache (expected [Hkv, "
                                       "seq_len, D] with the cache's Hkv and D)");
  }
  if (cache.element_type() != dtype || saved.element_type() != dtype) {
    return ffi::Error::InvalidArgument(Where(op, "layer", i) +
                                       " dtype differs from layer 0 (expected one dtype)");
  }
  const int64_t seq_len = s[1];
  if (t->num_layers == 0) {
    t->head_dim = static_cast<int32_t>(c[3]);
    t->seq_len = static_cast<int32_t>(seq_len);
  } else if (c[3] != t->head_dim || seq_len != t->seq_len) {
    return ffi::Error::InvalidArgument(Where(op, "layer", i) +
                                       " head dim or seq_len differs from layer 0 (expected "
                                       "one D and one seq_len for all layers)");
  }
  if (seq_len < 1 || seq_len > c[2]) {
    return ffi::Error::InvalidArgument(Where(op, "cache", i) + ": seq_len=" +
                                       std::to_string(seq_len) + " (expected 1 <= seq_len <= " +
                                       std::to_string(c[2]) + " = KVcap)");
  }
  const int n = t->num_layers++;
  t->cache[n] = cache_data;
  t->saved[n] = saved.untyped_data();
  t->batch[n] = static_cast<int32_t>(c[0]);
  t->heads[n] = static_cast<int32_t>(c[1]);
  t->cap[n] = static_cast<int32_t>(c[2]);
  if (t->heads[n] > t->max_heads) t->max_heads = t->heads[n];
  return ffi::Error::Success();
}

// Everything a handler needs for one call: the copy table, the dtype, and the
// caches whose result buffer XLA did not alias (copied whole before the rows;
// with input_output_aliases honoured there are none).
struct Plan {
  CopyTable table;
  ffi::DataType dtype = ffi::DataType::INVALID;
  int num_unaliased = 0;
  const void* unaliased_src[kMaxLayers];
  void* unaliased_dst[kMaxLayers];
  size_t unaliased_bytes[kMaxLayers];
};

// The row index is a scalar int32 buffer.
inline ffi::Error CheckBatchIdx(const char* op, const ffi::AnyBuffer& batch_idx) {
  if (batch_idx.element_type() != ffi::DataType::S32 || batch_idx.element_count() != 1) {
    return ffi::Error::InvalidArgument(std::string(op) +
                                       ": batch_idx must be an int32 scalar buffer");
  }
  return ffi::Error::Success();
}

inline void StartPlan(Plan* p, const int32_t* batch_idx, bool to_saved) {
  p->table = CopyTable{};
  p->table.batch_idx = batch_idx;
  p->table.to_saved = to_saved ? 1 : 0;
}

inline ffi::Error CheckSeqLenAttr(const char* op, const Plan& p, int32_t seq_len) {
  if (p.table.seq_len != seq_len) {
    return ffi::Error::InvalidArgument(std::string(op) + ": seq_len=" + std::to_string(seq_len) +
                                       " differs from the saved results' length " +
                                       std::to_string(p.table.seq_len));
  }
  return ffi::Error::Success();
}

// Instantiate writes into `out`, which must be the same size as `cache`.
inline ffi::Error AddInstantiateLayer(Plan* p, const char* op, size_t i,
                                      const ffi::AnyBuffer& cache, const ffi::AnyBuffer& saved,
                                      ffi::AnyBuffer& out) {
  if (out.size_bytes() != cache.size_bytes() || out.element_type() != cache.element_type()) {
    return ffi::Error::InvalidArgument(Where(op, "result", i) + " must match its cache layer");
  }
  if (i == 0) p->dtype = cache.element_type();
  if (ffi::Error e = AddLayer(&p->table, op, i, cache, out.untyped_data(), saved, p->dtype);
      e.failure()) {
    return e;
  }
  if (out.untyped_data() != cache.untyped_data()) {
    const int n = p->num_unaliased++;
    p->unaliased_src[n] = cache.untyped_data();
    p->unaliased_dst[n] = out.untyped_data();
    p->unaliased_bytes[n] = cache.size_bytes();
  }
  return ffi::Error::Success();
}

inline ffi::Error PlanSaveLayer(Plan* p, const ffi::AnyBuffer& batch_idx,
                                const ffi::AnyBuffer& cache, ffi::AnyBuffer saved,
                                int32_t seq_len) {
  const char* op = "save_kv_cache_layer";
  if (ffi::Error e = CheckBatchIdx(op, batch_idx); e.failure()) return e;
  StartPlan(p, static_cast<const int32_t*>(batch_idx.untyped_data()), /*to_saved=*/true);
  p->dtype = cache.element_type();
  if (ffi::Error e = AddLayer(&p->table, op, 0, cache, cache.untyped_data(), saved, p->dtype);
      e.failure()) {
    return e;
  }
  return CheckSeqLenAttr(op, *p, seq_len);
}

inline ffi::Error PlanInstantiateLayer(Plan* p, const ffi::AnyBuffer& batch_idx,
                                       const ffi::AnyBuffer& cache, const ffi::AnyBuffer& saved,
                                       ffi::AnyBuffer out) {
  const char* op = "instantiate_kv_cache_layer";
  if (ffi::Error e = CheckBatchIdx(op, batch_idx); e.failure()) return e;
  StartPlan(p, static_cast<const int32_t*>(batch_idx.untyped_data()), /*to_saved=*/false);
  return AddInstantiateLayer(p, op, 0, cache, saved, out);
}

inline ffi::Error PlanSaveBatched(Plan* p, const ffi::AnyBuffer& batch_idx,
                                  const ffi::RemainingArgs& layers,
                                  const ffi::RemainingRets& saved, int32_t seq_len) {
  const char* op = "save_kv_cache_batched";
  if (ffi::Error e = CheckBatchIdx(op, batch_idx); e.failure()) return e;
  if (layers.size() == 0 || layers.size() != saved.size()) {
    return ffi::Error::InvalidArgument(std::string(op) +
                                       ": expected one saved result per cache layer (>= 1)");
  }
  StartPlan(p, static_cast<const int32_t*>(batch_idx.untyped_data()), /*to_saved=*/true);
  for (size_t i = 0; i < layers.size(); ++i) {
    auto cache = layers.get<ffi::AnyBuffer>(i);
    if (cache.has_error()) return cache.error();
    auto out = saved.get<ffi::AnyBuffer>(i);
    if (out.has_error()) return out.error();
    if (i == 0) p->dtype = cache->element_type();
    if (ffi::Error e = AddLayer(&p->table, op, i, *cache, cache->untyped_data(), **out, p->dtype);
        e.failure()) {
      return e;
    }
  }
  return CheckSeqLenAttr(op, *p, seq_len);
}

// args = layers[0..n) then saved[0..n); outs[i] aliases layers[i].
inline ffi::Error PlanInstantiateBatched(Plan* p, const ffi::AnyBuffer& batch_idx,
                                         const ffi::RemainingArgs& args,
                                         const ffi::RemainingRets& outs) {
  const char* op = "instantiate_kv_cache_batched";
  if (ffi::Error e = CheckBatchIdx(op, batch_idx); e.failure()) return e;
  const size_t n = outs.size();
  if (n == 0 || args.size() != 2 * n) {
    return ffi::Error::InvalidArgument(std::string(op) +
                                       ": expected n cache layers, n saved arrays, n results");
  }
  StartPlan(p, static_cast<const int32_t*>(batch_idx.untyped_data()), /*to_saved=*/false);
  for (size_t i = 0; i < n; ++i) {
    auto cache = args.get<ffi::AnyBuffer>(i);
    if (cache.has_error()) return cache.error();
    auto src = args.get<ffi::AnyBuffer>(n + i);
    if (src.has_error()) return src.error();
    auto out = outs.get<ffi::AnyBuffer>(i);
    if (out.has_error()) return out.error();
    if (ffi::Error e = AddInstantiateLayer(p, op, i, *cache, *src, **out); e.failure()) {
      return e;
    }
  }
  return ffi::Error::Success();
}

// lengths and out are int32 with one shape; inc (if given) too.
inline ffi::Error CheckIncrement(const ffi::AnyBuffer& lengths, const ffi::AnyBuffer* inc,
                                 const ffi::AnyBuffer& out) {
  const bool ok = lengths.element_type() == ffi::DataType::S32 &&
                  out.element_type() == ffi::DataType::S32 &&
                  out.element_count() == lengths.element_count() &&
                  (inc == nullptr || (inc->element_type() == ffi::DataType::S32 &&
                                      inc->element_count() == lengths.element_count()));
  if (!ok) {
    return ffi::Error::InvalidArgument(
        "increment_lengths: lengths, inc and result must be int32 of one shape [B]");
  }
  return ffi::Error::Success();
}

// Element offsets of row (row, head) in a layer's cache and saved array; `row` is the value
// the handler read from t.batch_idx and checked against t.batch[layer].
#if defined(__CUDACC__)
__host__ __device__
#endif
inline void RowOffsets(const CopyTable& t, int layer, int head, int32_t row, int64_t* cache_off,
                       int64_t* saved_off) {
  const int64_t d = t.head_dim;
  *cache_off = (static_cast<int64_t>(row) * t.heads[layer] + head) * t.cap[layer] * d;
  *saved_off = static_cast<int64_t>(head) * t.seq_len * d;
}

}  // namespace edgellm::kv

#endif  // EDGELLM_FN_FFI_KV_CACHE_UTILS_H_
