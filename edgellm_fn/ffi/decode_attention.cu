// CUDA XLA FFI handler of decode attention (see decode_attention.h).
//
// Split-KV flash decoding over each row's valid slots only, so the cost grows
// with the valid length, not the capacity. Kernel 1, grid (splits, Hkv, B):
// every block normalises and rotates the new token's q (all G query heads of
// its kv head) and k; split 0 appends k/v to the cache; each block then runs an
// online softmax over its share of [lo, hi) (16-byte loads, one slot per group
// of D/8 lanes) and writes (max, sum, acc) partials. Kernel 2 merges the
// splits. The block that owns a slot p reads the new k/v from shared memory,
// never from the cache slot being written. Command-buffer compatible.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cuda_numerics.cuh"
#include "decode_attention.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace edgellm::attn {
namespace {

using namespace edgellm::cuda;  // NOLINT: the shared device helpers

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxDim = 256;
constexpr int kUnroll = 2;

// Norm + RoPE of one head vector held in shared memory (one warp).
template <typename Tag>
__device__ void NormRopeWarp(const Plan& p, float* x, const uint16_t* norm, int64_t b,
                             int64_t pos) {
  const int lane = threadIdx.x & 31;
  const int d = static_cast<int>(p.head_dim);
  if (norm) {
    float ss = 0.0f;
    for (int i = lane; i < d; i += 32) ss += x[i] * x[i];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    const float r = 1.0f / sqrtf(ss / static_cast<float>(d) + p.eps);
    for (int i = lane; i < d; i += 32) x[i] = Round(Tag{}, Round(Tag{}, x[i] * r) * Load(Tag{}, norm[i]));
    __syncwarp();
  }
  const int half = static_cast<int>(p.rot / 2);
  const int64_t row = pos < 0 ? 0 : (pos >= p.capacity ? p.capacity - 1 : pos);
  const float* cs = p.rope + ((p.rope_batch == 1 ? 0 : b) * p.capacity + row) * p.rot;
  for (int i = lane; i < half; i += 32) {
    const float c = Round(Tag{}, cs[i]), s = Round(Tag{}, cs[half + i]);
    const float x1 = x[i], x2 = x[half + i];
    x[i] = Round(Tag{}, Round(Tag{}, x1 * c) + Round(Tag{}, -x2 * s));
    x[half + i] = Round(Tag{}, Round(Tag{}, x2 * c) + Round(Tag{}, x1 * s));
  }
  __syncwarp();
}

template <typename Tag, int kG>
__global__ void __launch_bounds__(kThreads) AttendKernel(const Plan p) {
  const int64_t split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int d = static_cast<int>(p.head_dim);
  const int64_t c = p.capacity, hq = p.q_heads, hkv = p.kv_heads;
  const int g_heads = static_cast<int>(hq / hkv);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __shared__ float q_s[kG][kMaxDim];
  __shared__ float kn_s[kMaxDim];
  __shared__ float vn_s[kMaxDim];
  __shared__ float red_acc[kWarps][kG][kMaxDim];
  __shared__ float red_ml[kWarps][kG][2];

  const Range r = RowRange(p.start[b], p.ctx[b], c, p.window);
  const uint16_t* row = static_cast<const uint16_t*>(p.qkv) + b * (hq + 2 * hkv) * d;
  // This split's share of [lo, hi), in multiples of 16 slots.
  const int64_t n = r.hi - r.lo;
  int64_t chunk = (n + p.splits - 1) / p.splits;
  chunk = (chunk + 15) / 16 * 16;
  const int64_t s0 = r.lo + split * chunk;
  const int64_t s1 = s0 + chunk < r.hi ? s0 + chunk : r.hi;

  // Lane layout: a group of lps lanes holds one slot, lane % lps owns 8 dims.
  int lps = 1;
  while (lps * 8 < d) lps <<= 1;
  const int spw = 32 / lps;  // slots per warp
  const int ch = lane % lps, sl = lane / lps;
  const bool active = ch * 8 < d;
  uint16_t* kh = static_cast<uint16_t*>(p.k) + (b * hkv + h) * c * d;
  uint16_t* vh = static_cast<uint16_t*>(p.v) + (b * hkv + h) * c * d;
  const uint4* k4 = reinterpret_cast<const uint4*>(kh);
  const uint4* v4 = reinterpret_cast<const uint4*>(vh);
  const int64_t d8 = d / 8;
  const int64_t stride = static_cast<int64_t>(kWarps) * spw;
  // The first slots' loads are issued before the new token's prologue, to overlap it.
  uint4 kv[kUnroll], vv[kUnroll];
  auto issue = [&](int64_t wb) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = wb + sl + u * stride;
      if (j < s1 && active) {
        kv[u] = LoadStream(k4 + j * d8 + ch);
        vv[u] = LoadStream(v4 + j * d8 + ch);
      }
    }
  };
  issue(s0 + warp * spw);
  // New token: vectors 0..G-1 are the q heads, G is k, G+1 is v.
  for (int vec = warp; vec < g_heads + 2; vec += kWarps) {
    float* dst = vec < g_heads ? q_s[vec] : (vec == g_heads ? kn_s : vn_s);
    const int64_t off = vec < g_heads ? (h * g_heads + vec) * d
                                      : (vec == g_heads ? (hq + h) * d : (hq + hkv + h) * d);
    for (int i = lane; i < d; i += 32) dst[i] = Load(Tag{}, row[off + i]);
    __syncwarp();
    if (vec <= g_heads) {
      NormRopeWarp<Tag>(p, dst, static_cast<const uint16_t*>(vec < g_heads ? p.q_norm : p.k_norm),
                        b, r.pos);
    }
  }
  __syncthreads();
  if (split == 0 && r.write) {
    for (int i = threadIdx.x; i < d; i += kThreads) {
      kh[r.pos * d + i] = Bits(Tag{}, kn_s[i]);
      vh[r.pos * d + i] = Bits(Tag{}, vn_s[i]);
    }
  }

  float qf[kG][8];
#pragma unroll
  for (int g = 0; g < kG; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e) qf[g][e] = (g < g_heads && active) ? q_s[g][ch * 8 + e] : 0.0f;
  float m[kG], l[kG], acc[kG][8];
#pragma unroll
  for (int g = 0; g < kG; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.0f;
  }
  // The trip count is uniform across the warp (the shuffles below need every lane).
  for (int64_t wbase = s0 + warp * spw; wbase < s1; wbase += stride * kUnroll) {
    const int64_t base = wbase + sl;
    uint4 kc[kUnroll], vc[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      kc[u] = kv[u];
      vc[u] = vv[u];
    }
    issue(wbase + stride * kUnroll);  // next iteration's loads fly during this one's math
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = base + u * stride;
      const bool valid = j < s1;  // uniform within a lane group
      float kf[8], vf[8];
      if (j == r.pos && r.write) {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          kf[e] = active ? kn_s[ch * 8 + e] : 0.0f;
          vf[e] = active ? vn_s[ch * 8 + e] : 0.0f;
        }
      } else if (valid && active) {
        Unpack(Tag{}, kc[u], kf);
        Unpack(Tag{}, vc[u], vf);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) kf[e] = vf[e] = 0.0f;
      }
#pragma unroll
      for (int g = 0; g < kG; ++g) {
        float s = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) s = fmaf(qf[g][e], kf[e], s);
        for (int off = 1; off < lps; off <<= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
        if (!valid || g >= g_heads) continue;
        s *= p.scale;
        const float mn = fmaxf(m[g], s);
        const float corr = __expf(m[g] - mn), pr = __expf(s - mn);
        l[g] = l[g] * corr + pr;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(pr, vf[e], acc[g][e] * corr);
        m[g] = mn;
      }
    }
  }
  // Merge the slot groups of this warp (lanes with the same ch).
  for (int off = lps; off < 32; off <<= 1) {
#pragma unroll
    for (int g = 0; g < kG; ++g) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[g], off);
      const float lo = __shfl_xor_sync(0xffffffffu, l[g], off);
      const float mn = fmaxf(m[g], mo);
      const float a = mn == -INFINITY ? 0.0f : __expf(m[g] - mn);
      const float bo = mn == -INFINITY ? 0.0f : __expf(mo - mn);
      l[g] = l[g] * a + lo * bo;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float ao = __shfl_xor_sync(0xffffffffu, acc[g][e], off);
        acc[g][e] = acc[g][e] * a + ao * bo;
      }
      m[g] = mn;
    }
  }
  if (sl == 0 && active) {
#pragma unroll
    for (int g = 0; g < kG; ++g) {
#pragma unroll
      for (int e = 0; e < 8; ++e) red_acc[warp][g][ch * 8 + e] = acc[g][e];
      if (ch == 0) {
        red_ml[warp][g][0] = m[g];
        red_ml[warp][g][1] = l[g];
      }
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < g_heads * d; idx += kThreads) {
    const int g = idx / d, i = idx % d;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, red_ml[w][g][0]);
    float sum = 0.0f, a = 0.0f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float f = __expf(red_ml[w][g][0] - mx);
        sum += red_ml[w][g][1] * f;
        a += red_acc[w][g][i] * f;
      }
    }
    const int64_t hh = h * g_heads + g;
    const int64_t slot = (b * hq + hh) * p.splits + split;
    p.part_acc[slot * d + i] = a;
    if (i == 0) {
      p.part_ml[slot * 2] = mx;
      p.part_ml[slot * 2 + 1] = sum;
    }
  }
}

// One block per (row, head): the split weights exp(m_s - M) are computed once, in parallel, then
// each thread sums its dims over the splits with independent (unrolled) loads.
template <typename Tag>
__global__ void __launch_bounds__(128) CombineKernel(const Plan p) {
  constexpr int kMaxSplits = 64;
  __shared__ float weight[kMaxSplits];
  __shared__ float red[4];
  __shared__ float total;
  const int64_t bh = blockIdx.x;  // b * Hq + head
  const int d = static_cast<int>(p.head_dim), tid = threadIdx.x;
  const int splits = static_cast<int>(p.splits);
  const float* ml = p.part_ml + bh * splits * 2;
  const float* acc = p.part_acc + bh * splits * d;
  const float m = tid < splits ? ml[tid * 2] : -INFINITY;
  const float l = tid < splits ? ml[tid * 2 + 1] : 0.0f;
  float mx = m;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  if ((tid & 31) == 0) red[tid >> 5] = mx;
  __syncthreads();
  mx = fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
  const float wgt = (tid < splits && mx != -INFINITY) ? __expf(m - mx) : 0.0f;
  if (tid < splits) weight[tid] = wgt;
  float lw = l * wgt;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) lw += __shfl_xor_sync(0xffffffffu, lw, off);
  __syncthreads();
  if ((tid & 31) == 0) red[tid >> 5] = lw;
  __syncthreads();
  if (tid == 0) total = red[0] + red[1] + red[2] + red[3];
  __syncthreads();
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  for (int i = tid; i < d; i += blockDim.x) {
    float a = 0.0f;
#pragma unroll 8
    for (int sp = 0; sp < splits; ++sp) a = fmaf(acc[sp * d + i], weight[sp], a);
    static_cast<uint16_t*>(p.out)[bh * d + i] = Bits(Tag{}, a * inv);
  }
}

template <typename Tag, int kG>
ffi::Error LaunchG(cudaStream_t stream, const Plan& p) {
  const dim3 grid(static_cast<unsigned>(p.splits), static_cast<unsigned>(p.kv_heads),
                  static_cast<unsigned>(p.batch));
  AttendKernel<Tag, kG><<<grid, kThreads, 0, stream>>>(p);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) {
    return ffi::Error::Internal(std::string("edgellm_decode_attention: launch failed: ") +
                                cudaGetErrorString(err));
  }
  CombineKernel<Tag><<<static_cast<unsigned>(p.batch * p.q_heads), 128, 0, stream>>>(p);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) {
    return ffi::Error::Internal(std::string("edgellm_decode_attention: combine failed: ") +
                                cudaGetErrorString(err));
  }
  return ffi::Error::Success();
}

template <typename Tag>
ffi::Error LaunchTag(cudaStream_t stream, const Plan& p) {
  const int64_t g = p.q_heads / p.kv_heads;
  if (g <= 1) return LaunchG<Tag, 1>(stream, p);
  if (g <= 2) return LaunchG<Tag, 2>(stream, p);
  if (g <= 4) return LaunchG<Tag, 4>(stream, p);
  return LaunchG<Tag, 8>(stream, p);
}

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
  if (p.head_dim % 8 || p.head_dim > kMaxDim) return Bad("head_dim must be 8..256, a multiple of 8");
  if (p.q_heads / p.kv_heads > 8) return Bad("at most 8 query heads per kv head on the GPU");
  if (p.splits > 64) return Bad("at most 64 splits");
  const size_t bytes = static_cast<size_t>(k.size_bytes());
  if (p.k != p.k_in) cudaMemcpyAsync(p.k, p.k_in, bytes, cudaMemcpyDeviceToDevice, stream);
  if (p.v != p.v_in) cudaMemcpyAsync(p.v, p.v_in, bytes, cudaMemcpyDeviceToDevice, stream);
  switch (p.dtype) {
    case ffi::DataType::BF16:
      return LaunchTag<Bf16Tag>(stream, p);
    case ffi::DataType::F16:
      return LaunchTag<F16Tag>(stream, p);
    default:
      return Bad("the GPU kernel takes bfloat16 or float16 caches");
  }
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
