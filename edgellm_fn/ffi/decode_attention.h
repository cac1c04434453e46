// One decode step of attention for one layer (shared by the CPU and CUDA
// handlers): q/k norm and RoPE of the new token, its in-place KV append, and
// grouped-query attention over each row's VALID slots only.
//
//   qkv  [B, (Hq + 2 Hkv) D]   the QKV projection of the new token (bias added)
//   k, v [B, Hkv, C, D]        caches, updated in place (aliased to the results)
//   rope [RB, C, rot] f32      cos | sin table (RB = 1 or B)
//   start [B] i32              the new token's slot (= its position)
//   ctx   [B] i32              valid slots after this step
//
//   slot:   0 ... lo ............ p=start ... ctx ...... C-1
//   row b: [ .  .  | attended slots | new |  unused      ]
//   the new token is written iff p < ctx; it attends j in [lo, min(ctx, p+1)),
//   lo = p - window + 1 on a sliding-window layer, else 0. A row with no
//   attended slot gets zeros.
#pragma once

#include <cstdint>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace edgellm::attn {

namespace ffi = xla::ffi;

struct Plan {
  ffi::DataType dtype;
  int64_t batch = 0, q_heads = 0, kv_heads = 0, head_dim = 0, capacity = 0;
  int64_t rope_batch = 0, rot = 0, splits = 1;
  const void* qkv = nullptr;
  const void* q_norm = nullptr;  // null: no q/k norm
  const void* k_norm = nullptr;
  const float* rope = nullptr;
  const int32_t* start = nullptr;
  const int32_t* ctx = nullptr;
  void* k = nullptr;
  void* v = nullptr;
  void* out = nullptr;
  float* part_acc = nullptr;  // [B, Hq, splits, D]
  float* part_ml = nullptr;   // [B, Hq, splits, 2]
  const void* k_in = nullptr;
  const void* v_in = nullptr;
  float eps = 0.0f, scale = 1.0f;
  int32_t window = 0;
};

inline ffi::Error Bad(const std::string& what) {
  return ffi::Error::InvalidArgument("edgellm_decode_attention: " + what);
}

inline bool Dims(const ffi::AnyBuffer& b, std::initializer_list<int64_t> want) {
  auto d = b.dimensions();
  if (d.size() != want.size()) return false;
  size_t i = 0;
  for (int64_t w : want) {
    if (d[i++] != w) return false;
  }
  return true;
}

inline ffi::Error MakePlan(Plan* p, const ffi::AnyBuffer& qkv, const ffi::AnyBuffer& k,
                           const ffi::AnyBuffer& v, const ffi::AnyBuffer& rope,
                           const ffi::AnyBuffer& start, const ffi::AnyBuffer& ctx,
                           const ffi::AnyBuffer& q_norm, const ffi::AnyBuffer& k_norm,
                           ffi::AnyBuffer& out, ffi::AnyBuffer& k_out, ffi::AnyBuffer& v_out,
                           ffi::AnyBuffer& part_acc, ffi::AnyBuffer& part_ml, float eps,
                           float scale, int32_t window) {
  if (k.dimensions().size() != 4) return Bad("k cache must be [B, Hkv, C, D]");
  p->batch = k.dimensions()[0];
  p->kv_heads = k.dimensions()[1];
  p->capacity = k.dimensions()[2];
  p->head_dim = k.dimensions()[3];
  p->dtype = k.element_type();
  const int64_t b = p->batch, hkv = p->kv_heads, c = p->capacity, d = p->head_dim;
  if (!Dims(v, {b, hkv, c, d}) || v.element_type() != p->dtype) {
    return Bad("v cache must match the k cache");
  }
  if (qkv.dimensions().size() != 2 || qkv.dimensions()[0] != b || qkv.element_type() != p->dtype) {
    return Bad("qkv must be [B, (Hq + 2 Hkv) D] in the cache dtype");
  }
  const int64_t width = qkv.dimensions()[1];
  if (width % d || width / d <= 2 * hkv || (width / d - 2 * hkv) % hkv) {
    return Bad("qkv width " + std::to_string(width) + " is not (Hq + 2 Hkv) D with Hkv | Hq");
  }
  p->q_heads = width / d - 2 * hkv;
  if (rope.dimensions().size() != 3 || rope.element_type() != ffi::DataType::F32 ||
      rope.dimensions()[1] != c || (rope.dimensions()[0] != 1 && rope.dimensions()[0] != b)) {
    return Bad("rope must be [1 or B, C, rot] float32");
  }
  p->rope_batch = rope.dimensions()[0];
  p->rot = rope.dimensions()[2];
  if (p->rot % 2 || p->rot > d) return Bad("rot must be even and <= head_dim");
  for (const ffi::AnyBuffer* t : {&start, &ctx}) {
    if (!Dims(*t, {b}) || t->element_type() != ffi::DataType::S32) {
      return Bad("start and ctx must be [B] int32");
    }
  }
  const bool norm = q_norm.element_count() != 0;
  if (norm != (k_norm.element_count() != 0)) return Bad("q_norm and k_norm come together");
  if (norm && (!Dims(q_norm, {d}) || !Dims(k_norm, {d}) || q_norm.element_type() != p->dtype ||
               k_norm.element_type() != p->dtype)) {
    return Bad("q_norm / k_norm must be [D] in the cache dtype");
  }
  if (!Dims(out, {b, p->q_heads * d}) || out.element_type() != p->dtype) {
    return Bad("out must be [B, Hq D]");
  }
  if (part_acc.dimensions().size() != 4 || part_acc.dimensions()[0] != b ||
      part_acc.dimensions()[1] != p->q_heads || part_acc.dimensions()[3] != d ||
      part_acc.element_type() != ffi::DataType::F32) {
    return Bad("part_acc must be [B, Hq, splits, D] float32");
  }
  p->splits = part_acc.dimensions()[2];
  if (!Dims(part_ml, {b, p->q_heads, p->splits, 2}) ||
      part_ml.element_type() != ffi::DataType::F32 || p->splits < 1) {
    return Bad("part_ml must be [B, Hq, splits, 2] float32");
  }
  p->qkv = qkv.untyped_data();
  p->q_norm = norm ? q_norm.untyped_data() : nullptr;
  p->k_norm = norm ? k_norm.untyped_data() : nullptr;
  p->rope = static_cast<const float*>(rope.untyped_data());
  p->start = static_cast<const int32_t*>(start.untyped_data());
  p->ctx = static_cast<const int32_t*>(ctx.untyped_data());
  p->k_in = k.untyped_data();
  p->v_in = v.untyped_data();
  p->k = k_out.untyped_data();
  p->v = v_out.untyped_data();
  p->out = out.untyped_data();
  p->part_acc = static_cast<float*>(part_acc.untyped_data());
  p->part_ml = static_cast<float*>(part_ml.untyped_data());
  p->eps = eps;
  p->scale = scale;
  p->window = window;
  return ffi::Error::Success();
}

// The attended range [lo, hi) of a row and whether its new token is written.
struct Range {
  int64_t lo, hi, pos;
  bool write;
};

#if defined(__CUDACC__)
__host__ __device__
#endif
inline Range RowRange(int32_t start, int32_t ctx, int64_t capacity, int32_t window) {
  Range r;
  r.pos = start;
  const int64_t valid = ctx < 0 ? 0 : (ctx > capacity ? capacity : ctx);
  r.write = start >= 0 && start < valid;
  r.hi = start < 0 ? 0 : (start + 1 < valid ? start + 1 : valid);
  r.lo = window > 0 && start - window + 1 > 0 ? start - window + 1 : 0;
  if (r.lo > r.hi) r.lo = r.hi;
  return r;
}

}  // namespace edgellm::attn
