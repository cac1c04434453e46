// The decode layer stack as one custom call: for every layer, one new token per row,
//
//   qkv  = gemv(x, wqkv, norm=attn_norm, bias)             RMSNorm -> QKV
//   attn = decode_attention(qkv, k, v, rope, start, ctx)    q/k norm, RoPE, KV append
//   x    = gemv(attn, wo, bias, residual=x)                 O + residual (x updated in place)
//   h    = gemv(x, w_gate_up, norm=mlp_norm, gated)         RMSNorm -> act(gate) * up
//   x    = gemv(h, w_down, bias, residual=x)                down + residual
//
// with the per-op plans of gemv.h and decode_attention.h (the same kernels and CPU twins). One
// call lets the CUDA handler chain its kernels as programmatic dependent launches: each kernel
// streams its weights while the previous one finishes, which separate custom calls (separate
// command-buffer nodes) cannot do.
//
// Buffers in call order (an optional one is empty when absent):
//   args: x [M, H], rope [1|B, C, rot] f32, start [B] i32, ctx [B] i32, none (empty), then per
//         layer the kLayerArgs buffers of LayerArg;
//   rets: x_out [M, H], qkv [M, Wqkv], attn [M, Hq*D], h [M, F], part_acc, part_ml (scratch),
//         then per layer k_cache, v_cache (aliased to the inputs).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "decode_attention.h"
#include "gemv.h"
#include "xla/ffi/api/ffi.h"

namespace edgellm::stack {

namespace ffi = xla::ffi;

enum LayerArg : size_t {
  kAttnNorm, kWqkv, kBqkv, kQNorm, kKNorm, kWo, kBo, kMlpNorm, kWGateUp, kBGateUp, kWDown,
  kBDown, kKCache, kVCache, kLayerArgs
};
enum FixedArg : size_t { kX, kRope, kStart, kCtx, kNone, kFixedArgs };
enum FixedRet : size_t { kXOut, kQkvOut, kAttnOut, kHOut, kPartAcc, kPartMl, kFixedRets };
constexpr size_t kLayerRets = 2;

struct Layer {
  gemv::Plan qkv, o, gate_up, down;
  attn::Plan attn;
  size_t cache_bytes = 0;
};

inline ffi::Error Bad(const std::string& what) {
  return ffi::Error::InvalidArgument("edgellm_decode_stack: " + what);
}

// Decodes the variadic buffers and builds every layer's plans; nothing runs on failure.
inline ffi::Error MakeLayers(std::vector<Layer>* layers, const ffi::RemainingArgs& args,
                             const ffi::RemainingRets& rets, float eps, float scale,
                             int32_t activation, ffi::Span<const int32_t> windows) {
  if (args.size() < kFixedArgs + kLayerArgs || (args.size() - kFixedArgs) % kLayerArgs) {
    return Bad(std::to_string(args.size()) + " operands (expected " +
               std::to_string(kFixedArgs) + " + " + std::to_string(kLayerArgs) +
               " per layer)");
  }
  const size_t n = (args.size() - kFixedArgs) / kLayerArgs;
  if (rets.size() != kFixedRets + kLayerRets * n) {
    return Bad(std::to_string(rets.size()) + " results (expected " +
               std::to_string(kFixedRets + kLayerRets * n) + " for " + std::to_string(n) +
               " layers)");
  }
  if (windows.size() != n) {
    return Bad("windows has " + std::to_string(windows.size()) + " entries for " +
               std::to_string(n) + " layers");
  }
  std::vector<ffi::AnyBuffer> a, r;
  for (size_t i = 0; i < args.size(); ++i) {
    auto b = args.get<ffi::AnyBuffer>(i);
    if (b.has_error()) return b.error();
    a.push_back(*b);
  }
  for (size_t i = 0; i < rets.size(); ++i) {
    auto b = rets.get<ffi::AnyBuffer>(i);
    if (b.has_error()) return b.error();
    r.push_back(**b);
  }
  if (a[kNone].element_count() != 0) return Bad("the `none` operand must be empty");
  layers->assign(n, Layer{});
  for (size_t l = 0; l < n; ++l) {
    const auto at = [&](LayerArg i) -> ffi::AnyBuffer& { return a[kFixedArgs + l * kLayerArgs + i]; };
    ffi::AnyBuffer& x = l == 0 ? a[kX] : r[kXOut];
    ffi::AnyBuffer& none = a[kNone];
    Layer& L = (*layers)[l];
    const std::string where = "layer " + std::to_string(l) + ": ";
    ffi::Error e = gemv::MakePlan(&L.qkv, x, at(kWqkv), at(kAttnNorm), at(kBqkv), none,
                                  r[kQkvOut], eps, false, activation);
    if (e.success()) {
      e = attn::MakePlan(&L.attn, r[kQkvOut], at(kKCache), at(kVCache), a[kRope], a[kStart],
                         a[kCtx], at(kQNorm), at(kKNorm), r[kAttnOut],
                         r[kFixedRets + 2 * l], r[kFixedRets + 2 * l + 1], r[kPartAcc],
                         r[kPartMl], eps, scale, windows[l]);
    }
    if (e.success()) {
      e = gemv::MakePlan(&L.o, r[kAttnOut], at(kWo), none, at(kBo), x, r[kXOut], eps, false,
                         activation);
    }
    if (e.success()) {
      e = gemv::MakePlan(&L.gate_up, r[kXOut], at(kWGateUp), at(kMlpNorm), at(kBGateUp), none,
                         r[kHOut], eps, true, activation);
    }
    if (e.success()) {
      e = gemv::MakePlan(&L.down, r[kHOut], at(kWDown), none, at(kBDown), r[kXOut], r[kXOut],
                         eps, false, activation);
    }
    if (e.failure()) return Bad(where + e.message());
    L.cache_bytes = static_cast<size_t>(at(kKCache).size_bytes());
  }
  return ffi::Error::Success();
}

}  // namespace edgellm::stack
