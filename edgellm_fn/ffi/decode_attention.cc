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
#include "ffi_capsule.h"
#include "nanobind/nanobind.h"
#include "numerics.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;

namespace edgellm::attn {
namespace {

using num::Bf16;
using num::F16;
using num::FromFloat;
using num::Round;
using num::ToFloat;

// Norm (optional) then rotate-half RoPE of one head vector, in place (floats
// holding values of T).
template <typename T>
void NormRope(const Plan& p, float* x, const T* norm, int64_t b, int64_t pos) {
  const int64_t d = p.head_dim;
  if (norm) {
    float ss = 0.0f;
    for (int64_t i = 0; i < d; ++i) ss += x[i] * x[i];
    const float r = 1.0f / std::sqrt(ss / static_cast<float>(d) + p.eps);
    for (int64_t i = 0; i < d; ++i) x[i] = Round<T>(Round<T>(x[i] * r) * ToFloat(norm[i]));
  }
  const int64_t half = p.rot / 2;
  const int64_t row = pos < 0 ? 0 : (pos >= p.capacity ? p.capacity - 1 : pos);
  const float* cs = p.rope + ((p.rope_batch == 1 ? 0 : b) * p.capacity + row) * p.rot;
  for (int64_t i = 0; i < half; ++i) {
    const float c = Round<T>(cs[i]), s = Round<T>(cs[half + i]);
    const float x1 = x[i], x2 = x[half + i];
    x[i] = Round<T>(Round<T>(x1 * c) + Round<T>(-x2 * s));
    x[half + i] = Round<T>(Round<T>(x2 * c) + Round<T>(x1 * s));
  }
}

template <typename T>
ffi::Error AttendImpl(const Plan& p) {
  const int64_t d = p.head_dim, c = p.capacity, hq = p.q_heads, hkv = p.kv_heads;
  const int64_t g = hq / hkv, width = (hq + 2 * hkv) * d;
  const T* qkv = static_cast<const T*>(p.qkv);
  T* kc = static_cast<T*>(p.k);
  T* vc = static_cast<T*>(p.v);
  const size_t cache_bytes = static_cast<size_t>(p.batch * hkv * c * d) * sizeof(T);
  if (p.k != p.k_in) std::memcpy(p.k, p.k_in, cache_bytes);
  if (p.v != p.v_in) std::memcpy(p.v, p.v_in, cache_bytes);
  T* out = static_cast<T*>(p.out);
  std::vector<float> q(static_cast<size_t>(g * d)), kn(d), vn(d), scores;
  for (int64_t b = 0; b < p.batch; ++b) {
    const Range r = RowRange(p.start[b], p.ctx[b], c, p.window);
    for (int64_t h = 0; h < hkv; ++h) {
      const T* row = qkv + b * width;
      for (int64_t i = 0; i < d; ++i) {
        kn[i] = ToFloat(row[(hq + h) * d + i]);
        vn[i] = ToFloat(row[(hq + hkv + h) * d + i]);
      }
      NormRope<T>(p, kn.data(), static_cast<const T*>(p.k_norm), b, r.pos);
      T* kh = kc + (b * hkv + h) * c * d;
      T* vh = vc + (b * hkv + h) * c * d;
      if (r.write) {
        for (int64_t i = 0; i < d; ++i) {
          kh[r.pos * d + i] = FromFloat<T>(kn[i]);
          vh[r.pos * d + i] = FromFloat<T>(vn[i]);
        }
      }
      for (int64_t j = 0; j < g; ++j) {
        float* qj = q.data() + j * d;
        for (int64_t i = 0; i < d; ++i) qj[i] = ToFloat(row[(h * g + j) * d + i]);
        NormRope<T>(p, qj, static_cast<const T*>(p.q_norm), b, r.pos);
        T* o = out + b * hq * d + (h * g + j) * d;
        if (r.hi <= r.lo) {
          for (int64_t i = 0; i < d; ++i) o[i] = FromFloat<T>(0.0f);
          continue;
        }
        scores.assign(static_cast<size_t>(r.hi - r.lo), 0.0f);
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t s = r.lo; s < r.hi; ++s) {
          float dot = 0.0f;
          for (int64_t i = 0; i < d; ++i) dot += qj[i] * ToFloat(kh[s * d + i]);
          scores[s - r.lo] = dot * p.scale;
          mx = std::max(mx, scores[s - r.lo]);
        }
        float sum = 0.0f;
        for (float& s : scores) sum += (s = std::exp(s - mx));
        for (int64_t i = 0; i < d; ++i) {
          float acc = 0.0f;
          for (int64_t s = r.lo; s < r.hi; ++s) acc += scores[s - r.lo] * ToFloat(vh[s * d + i]);
          o[i] = FromFloat<T>(acc / sum);
        }
      }
    }
  }
  return ffi::Error::Success();
}

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
  switch (p.dtype) {
    case ffi::DataType::F32:
      return AttendImpl<float>(p);
    case ffi::DataType::BF16:
      return AttendImpl<Bf16>(p);
    case ffi::DataType::F16:
      return AttendImpl<F16>(p);
    default:
      return Bad("unsupported dtype");
  }
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
