// The fused decode GEMV's CUDA kernel and launchers (see gemv.h for the math), shared by the
// CUDA handler (gemv.cu) and the launch-configuration sweep (benchmarks/gemv_sweep.cu).
//
// Memory-bound at small M: every weight byte is streamed once with 16-byte
// loads that bypass L1 (ld.global.nc.L1::no_allocate), rows [N, K] contiguous.
// A block of 8 warps owns a few rows and splits K over its threads; each
// thread issues all its weight loads first, then computes the norm (if any)
// from its own x chunks, so the prologue hides under the weight fetch; partial
// sums meet in shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cuda_numerics.cuh"
#include "gemv.h"
#include "numerics.h"
#include "xla/ffi/api/ffi.h"

namespace edgellm::gemv {
namespace {

namespace ffi = xla::ffi;
using namespace edgellm::cuda;  // NOLINT: the shared device helpers

constexpr int kDefaultWarps = 8;  // warps per block of the shipped configurations

template <typename Tag>
__device__ __forceinline__ float Act(int32_t act, float g) {
  switch (act) {
    case num::kRelu:
      return g > 0.0f ? g : 0.0f;
    case num::kGeluExact:
      return Round(Tag{}, 0.5f * g * (1.0f + erff(g * 0.70710678118654752f)));
    case num::kGeluTanh:
      return Round(Tag{}, 0.5f * g * (1.0f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g))));
    default:
      return Round(Tag{}, g * Round(Tag{}, 1.0f / (1.0f + __expf(-g))));
  }
}

// One block computes kR weight rows (a gated op: kR/2 gate rows and their up rows) for every
// row of x. Its 8 warps split K: thread t owns the 16-byte chunks c = t + 256 i, so all of a
// tile's weight loads (kPre chunk iterations x kR rows per thread) are issued before the norm
// prologue reads x, and the weights arrive while the norm is computed. The thread's own chunks
// also give its share of the norm's sum of squares, so x is never staged.
template <typename Tag, typename OutT, int kM, int kR, int kPre, bool kNorm, bool kGated,
          int kWarps>
__global__ void __launch_bounds__(kWarps * 32) GemvKernel(const Plan p) {
  constexpr int kThreads = kWarps * 32;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t kc = p.k / 8;
  const int64_t iters = (kc + kThreads - 1) / kThreads;
  const int m_rows = static_cast<int>(p.m);
  const uint4* w = static_cast<const uint4*>(p.w);
  const uint4* x = static_cast<const uint4*>(p.x);
  const uint4* nw = static_cast<const uint4*>(p.norm_weight);
  constexpr int kUnits = kGated ? kR / 2 : kR;
  const int64_t units = p.n_out;
  const int64_t u0 = static_cast<int64_t>(blockIdx.x) * kUnits;
  int64_t row[kR];
#pragma unroll
  for (int r = 0; r < kR; ++r) {
    const int64_t u = u0 + (kGated ? r % kUnits : r);
    const int64_t clamped = u < units ? u : units - 1;  // idle rows re-read a valid row
    row[r] = kGated && r >= kUnits ? units + clamped : clamped;
  }
  uint4 wv[kPre][kR];
#pragma unroll
  for (int i = 0; i < kPre; ++i) {
    const int64_t c = tid + static_cast<int64_t>(i) * kThreads;
#pragma unroll
    for (int r = 0; r < kR; ++r) wv[i][r] = c < kc ? LoadStream(w + row[r] * kc + c) : uint4{};
  }

  __shared__ float scale[kM];
  __shared__ float red[kWarps][kR][kM];
  if constexpr (kNorm) {
    float ss[kM];
#pragma unroll
    for (int m = 0; m < kM; ++m) {
      ss[m] = 0.0f;
      if (m < m_rows) {
        for (int64_t c = tid; c < kc; c += kThreads) {
          float f[8];
          Unpack(Tag{}, x[m * kc + c], f);
#pragma unroll
          for (int e = 0; e < 8; ++e) ss[m] = fmaf(f[e], f[e], ss[m]);
        }
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) ss[m] += __shfl_xor_sync(0xffffffffu, ss[m], off);
      if (lane == 0) red[warp][0][m] = ss[m];
    }
    __syncthreads();
    if (tid < kM) {
      float t = 0.0f;
#pragma unroll
      for (int v = 0; v < kWarps; ++v) t += red[v][0][tid];
      scale[tid] = 1.0f / sqrtf(t / static_cast<float>(p.k) + p.eps);
    }
    __syncthreads();
  }

  float acc[kR][kM];
#pragma unroll
  for (int r = 0; r < kR; ++r)
#pragma unroll
    for (int m = 0; m < kM; ++m) acc[r][m] = 0.0f;
  for (int64_t i0 = 0; i0 < iters; i0 += kPre) {
    if (i0 > 0) {
#pragma unroll
      for (int i = 0; i < kPre; ++i) {
        const int64_t c = tid + (i0 + i) * kThreads;
#pragma unroll
        for (int r = 0; r < kR; ++r) wv[i][r] = c < kc ? LoadStream(w + row[r] * kc + c) : uint4{};
      }
    }
#pragma unroll
    for (int i = 0; i < kPre; ++i) {
      const int64_t c = tid + (i0 + i) * kThreads;
      if (c >= kc) continue;
      float wf[kR][8];
#pragma unroll
      for (int r = 0; r < kR; ++r) Unpack(Tag{}, wv[i][r], wf[r]);
      float g[8];
      if constexpr (kNorm) Unpack(Tag{}, nw[c], g);
#pragma unroll
      for (int m = 0; m < kM; ++m) {
        if (m >= m_rows) continue;
        float xf[8];
        Unpack(Tag{}, x[m * kc + c], xf);
        if constexpr (kNorm) {
#pragma unroll
          for (int e = 0; e < 8; ++e) xf[e] = Round(Tag{}, Round(Tag{}, xf[e] * scale[m]) * g[e]);
        }
#pragma unroll
        for (int r = 0; r < kR; ++r)
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[r][m] = fmaf(xf[e], wf[r][e], acc[r][m]);
      }
    }
  }
  if constexpr (kNorm) __syncthreads();  // red[][0][] held the norm partials
#pragma unroll
  for (int r = 0; r < kR; ++r)
#pragma unroll
    for (int m = 0; m < kM; ++m) {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1)
        acc[r][m] += __shfl_xor_sync(0xffffffffu, acc[r][m], off);
      if (lane == 0) red[warp][r][m] = acc[r][m];
    }
  __syncthreads();

  // Epilogue: thread t writes output (unit t / kM, row t % kM).
  const int t = tid;
  if (t >= kUnits * kM) return;
  const int o = t / kM, m = t % kM;
  const int64_t u = u0 + o;
  if (m >= m_rows || u >= units) return;
  auto total = [&](int r) {
    float v = 0.0f;
#pragma unroll
    for (int wi = 0; wi < kWarps; ++wi) v += red[wi][r][m];
    return v;
  };
  const uint16_t* bias = static_cast<const uint16_t*>(p.bias);
  const uint16_t* res = static_cast<const uint16_t*>(p.residual);
  float y;
  if constexpr (kGated) {
    float gt = Round(Tag{}, total(o)), up = Round(Tag{}, total(kUnits + o));
    if (bias) {
      gt = Round(Tag{}, gt + Load(Tag{}, bias + u));
      up = Round(Tag{}, up + Load(Tag{}, bias + units + u));
    }
    y = Round(Tag{}, Act<Tag>(p.activation, gt) * up);
  } else if constexpr (sizeof(OutT) == 4) {
    y = total(o) + (bias ? Load(Tag{}, bias + u) : 0.0f);
  } else {
    y = Round(Tag{}, total(o));
    if (bias) y = Round(Tag{}, y + Load(Tag{}, bias + u));
  }
  if constexpr (sizeof(OutT) == 4) {
    static_cast<float*>(p.out)[m * units + u] = y;
  } else {
    if (res) y = Round(Tag{}, Load(Tag{}, res + m * units + u) + y);
    static_cast<uint16_t*>(p.out)[m * units + u] = Bits(Tag{}, y);
  }
}

// m16n8k16 tensor-core product, f32 accumulate: d += A (16 x 16, row) * B (16 x 8, col).
__device__ __forceinline__ void Mma(Bf16Tag, float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                    uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void Mma(F16Tag, float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                    uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// 3..16 rows of x on tensor cores ("swap AB": the weights are the MMA's 16-row A operand, the
// rows of x its 8-column B operand, kNT tiles of 8). A block owns 16 weight rows (a gated op:
// 8 gate rows and their 8 up rows) and its kW warps split K in steps of 32. Lane (g, t) of a
// warp loads 16 bytes at k = 32 s + 8 t from weight rows g and g + 8 and from x row g: the
// reduction over k does not care which k sits in which MMA slot, as long as A and B agree, so
// the 16-byte chunks feed the fragments directly (no shuffle, no shared-memory staging). x is
// small and read by every block, so it is loaded through L1 (__ldg); the norm is applied to it
// on the fly with the reference's rounding; partial sums meet in shared memory.
template <typename Tag, typename OutT, int kNT, int kW, int kPre, bool kNorm, bool kGated>
__global__ void __launch_bounds__(kW * 32) GemvMmaKernel(const Plan p) {
  constexpr int kThreads = kW * 32, kM = 8 * kNT, kUnits = kGated ? 8 : 16;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t kc = p.k / 8, steps = (kc + 3) / 4;
  const int m_rows = static_cast<int>(p.m);
  const uint4* w = static_cast<const uint4*>(p.w);
  const uint4* x = static_cast<const uint4*>(p.x);
  const uint4* nw = static_cast<const uint4*>(p.norm_weight);
  const int64_t units = p.n_out, u0 = static_cast<int64_t>(blockIdx.x) * kUnits;
  auto weight_row = [&](int r) -> int64_t {
    const int64_t u = u0 + (kGated ? (r & 7) : r);
    const int64_t clamped = u < units ? u : units - 1;  // idle rows re-read a valid row
    return kGated && r >= 8 ? units + clamped : clamped;
  };
  const uint4* w_lo = w + weight_row(g) * kc;
  const uint4* w_hi = w + weight_row(g + 8) * kc;
  uint4 a_lo[kPre], a_hi[kPre];
  auto load = [&](int64_t s0) {
#pragma unroll
    for (int i = 0; i < kPre; ++i) {
      const int64_t c = (s0 + static_cast<int64_t>(i) * kW) * 4 + t;
      a_lo[i] = c < kc ? LoadStream(w_lo + c) : uint4{};
      a_hi[i] = c < kc ? LoadStream(w_hi + c) : uint4{};
    }
  };
  load(warp);  // the first weights are in flight while the norm prologue runs

  __shared__ float scale[kM];
  __shared__ float red[kW][16][kM];
  if constexpr (kNorm) {
    float ss[kM];
#pragma unroll
    for (int m = 0; m < kM; ++m) {
      ss[m] = 0.0f;
      if (m < m_rows) {
        for (int64_t c = tid; c < kc; c += kThreads) {
          float f[8];
          Unpack(Tag{}, __ldg(x + m * kc + c), f);
#pragma unroll
          for (int e = 0; e < 8; ++e) ss[m] = fmaf(f[e], f[e], ss[m]);
        }
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) ss[m] += __shfl_xor_sync(0xffffffffu, ss[m], off);
      if (lane == 0) red[warp][0][m] = ss[m];
    }
    __syncthreads();
    if (tid < kM) {
      float total = 0.0f;
#pragma unroll
      for (int v = 0; v < kW; ++v) total += red[v][0][tid];
      scale[tid] = 1.0f / sqrtf(total / static_cast<float>(p.k) + p.eps);
    }
    __syncthreads();
  }

  float acc[kNT][4];
#pragma unroll
  for (int j = 0; j < kNT; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
  for (int64_t s0 = warp; s0 < steps; s0 += static_cast<int64_t>(kW) * kPre) {
    if (s0 != warp) load(s0);
#pragma unroll
    for (int i = 0; i < kPre; ++i) {
      const int64_t c = (s0 + static_cast<int64_t>(i) * kW) * 4 + t;
      if (s0 + static_cast<int64_t>(i) * kW >= steps) break;
      float gw[8];
      if constexpr (kNorm) {
        if (c < kc) Unpack(Tag{}, __ldg(nw + c), gw);
      }
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
        const int m = 8 * j + g;
        uint4 b = m < m_rows && c < kc ? __ldg(x + m * kc + c) : uint4{};
        if constexpr (kNorm) {
          if (m < m_rows && c < kc) {
            float f[8];
            Unpack(Tag{}, b, f);
            uint32_t packed[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float lo = Round(Tag{}, Round(Tag{}, f[2 * e] * scale[m]) * gw[2 * e]);
              const float hi =
                  Round(Tag{}, Round(Tag{}, f[2 * e + 1] * scale[m]) * gw[2 * e + 1]);
              packed[e] = static_cast<uint32_t>(Bits(Tag{}, lo)) |
                          (static_cast<uint32_t>(Bits(Tag{}, hi)) << 16);
            }
            b = uint4{packed[0], packed[1], packed[2], packed[3]};
          }
        }
        Mma(Tag{}, acc[j], a_lo[i].x, a_hi[i].x, a_lo[i].y, a_hi[i].y, b.x, b.y);
        Mma(Tag{}, acc[j], a_lo[i].z, a_hi[i].z, a_lo[i].w, a_hi[i].w, b.z, b.w);
      }
    }
  }
  if constexpr (kNorm) __syncthreads();  // red[][0][] held the norm partials
#pragma unroll
  for (int j = 0; j < kNT; ++j) {
    const int col = 8 * j + 2 * t;
    red[warp][g][col] = acc[j][0];
    red[warp][g][col + 1] = acc[j][1];
    red[warp][g + 8][col] = acc[j][2];
    red[warp][g + 8][col + 1] = acc[j][3];
  }
  __syncthreads();

  const uint16_t* bias = static_cast<const uint16_t*>(p.bias);
  const uint16_t* res = static_cast<const uint16_t*>(p.residual);
  for (int e = tid; e < kUnits * kM; e += kThreads) {
    const int o = e / kM, m = e % kM;
    const int64_t u = u0 + o;
    if (m >= m_rows || u >= units) continue;
    auto total = [&](int r) {
      float v = 0.0f;
#pragma unroll
      for (int wi = 0; wi < kW; ++wi) v += red[wi][r][m];
      return v;
    };
    float y;
    if constexpr (kGated) {
      float gt = Round(Tag{}, total(o)), up = Round(Tag{}, total(8 + o));
      if (bias) {
        gt = Round(Tag{}, gt + Load(Tag{}, bias + u));
        up = Round(Tag{}, up + Load(Tag{}, bias + units + u));
      }
      y = Round(Tag{}, Act<Tag>(p.activation, gt) * up);
    } else if constexpr (sizeof(OutT) == 4) {
      y = total(o) + (bias ? Load(Tag{}, bias + u) : 0.0f);
    } else {
      y = Round(Tag{}, total(o));
      if (bias) y = Round(Tag{}, y + Load(Tag{}, bias + u));
    }
    if constexpr (sizeof(OutT) == 4) {
      static_cast<float*>(p.out)[m * units + u] = y;
    } else {
      if (res) y = Round(Tag{}, Load(Tag{}, res + m * units + u) + y);
      static_cast<uint16_t*>(p.out)[m * units + u] = Bits(Tag{}, y);
    }
  }
}

template <typename Tag, typename OutT, int kNT, int kW, int kPre, bool kNorm, bool kGated>
ffi::Error LaunchMma(cudaStream_t stream, const Plan& p) {
  constexpr int kUnits = kGated ? 8 : 16;
  const int64_t blocks = (p.n_out + kUnits - 1) / kUnits;
  GemvMmaKernel<Tag, OutT, kNT, kW, kPre, kNorm, kGated>
      <<<static_cast<unsigned>(blocks), kW * 32, 0, stream>>>(p);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) {
    return ffi::Error::Internal(std::string("edgellm_gemv: kernel launch failed: ") +
                                cudaGetErrorString(err));
  }
  return ffi::Error::Success();
}

template <typename Tag, typename OutT, int kM, int kR, int kPre, bool kNorm, bool kGated,
          int kWarps = kDefaultWarps>
ffi::Error Launch(cudaStream_t stream, const Plan& p) {
  constexpr int kUnits = kGated ? kR / 2 : kR;
  static_assert(kUnits * kM <= kWarps * 32, "the epilogue needs a thread per output");
  const int64_t blocks = (p.n_out + kUnits - 1) / kUnits;
  GemvKernel<Tag, OutT, kM, kR, kPre, kNorm, kGated, kWarps>
      <<<static_cast<unsigned>(blocks), kWarps * 32, 0, stream>>>(p);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) {
    return ffi::Error::Internal(std::string("edgellm_gemv: kernel launch failed: ") +
                                cudaGetErrorString(err));
  }
  return ffi::Error::Success();
}

// Loads in flight per thread = kPre x kR: enough to cover memory latency at any K. At one row
// into the model dtype, more and smaller blocks win (benchmarks/gemv_sweep.cu on an H200, 16
// layers' Llama-3.2-1B projections back to back: down 11.5 -> 9.6 us, gate/up 18.7 -> 17.8 us,
// O 4.0 -> 3.7 us per launch; QKV and the f32-logits lm_head were already at their best).
template <typename Tag, typename OutT, int kM, bool kNorm, bool kGated>
ffi::Error LaunchK(cudaStream_t stream, const Plan& p) {
  constexpr int kThreads = kDefaultWarps * 32;
  const int64_t iters = (p.k / 8 + kThreads - 1) / kThreads;
  if constexpr (kM == 1 && sizeof(OutT) == 2) {
    if (iters > 1) return Launch<Tag, OutT, 1, 2, 1, kNorm, kGated>(stream, p);
    if (kGated) return Launch<Tag, OutT, 1, 4, 1, kNorm, kGated, 4>(stream, p);
    if (p.n_out <= 2048) return Launch<Tag, OutT, 1, 2, 1, kNorm, kGated>(stream, p);
  }
  if (iters <= 1) return Launch<Tag, OutT, kM, (kM <= 4 ? 8 : 4), 1, kNorm, kGated>(stream, p);
  if (iters <= 2) return Launch<Tag, OutT, kM, 4, 2, kNorm, kGated>(stream, p);
  return Launch<Tag, OutT, kM, 4, 4, kNorm, kGated>(stream, p);
}

// Tensor-core launches: fewer warps per block where there are blocks enough to fill the GPU
// (132 SMs on an H200), more where a projection has few 16-row tiles (K is split wider).
template <typename Tag, typename OutT, int kNT, bool kNorm, bool kGated>
ffi::Error LaunchMmaN(cudaStream_t stream, const Plan& p) {
  const int64_t blocks = (p.n_out + (kGated ? 7 : 15)) / (kGated ? 8 : 16);
  // From benchmarks/gemv_sweep.cu on an H200 (8 and 16 rows): the fewer the blocks, the more
  // warps split K; two loads in flight per lane beat four at every size.
  if (blocks >= 512) return LaunchMma<Tag, OutT, kNT, 4, 2, kNorm, kGated>(stream, p);
  if (blocks >= 160) return LaunchMma<Tag, OutT, kNT, 16, 2, kNorm, kGated>(stream, p);
  return LaunchMma<Tag, OutT, kNT, 32, 2, kNorm, kGated>(stream, p);
}

// One or two rows: the CUDA-core kernel (x broadcast from registers); 3..16: tensor cores.
template <typename Tag, typename OutT, bool kNorm, bool kGated>
ffi::Error LaunchM(cudaStream_t stream, const Plan& p) {
  if (p.m <= 1) return LaunchK<Tag, OutT, 1, kNorm, kGated>(stream, p);
  if (p.m <= 2) return LaunchK<Tag, OutT, 2, kNorm, kGated>(stream, p);
  if (p.m <= 8) return LaunchMmaN<Tag, OutT, 1, kNorm, kGated>(stream, p);
  return LaunchMmaN<Tag, OutT, 2, kNorm, kGated>(stream, p);
}

template <typename Tag>
ffi::Error LaunchTag(cudaStream_t stream, const Plan& p) {
  const bool norm = p.norm_weight != nullptr;
  if (p.out_dtype == ffi::DataType::F32) {
    if (p.gated) return Bad("a gated op writes the model dtype");
    return norm ? LaunchM<Tag, float, true, false>(stream, p)
                : LaunchM<Tag, float, false, false>(stream, p);
  }
  if (p.gated) {
    return norm ? LaunchM<Tag, uint16_t, true, true>(stream, p)
                : LaunchM<Tag, uint16_t, false, true>(stream, p);
  }
  return norm ? LaunchM<Tag, uint16_t, true, false>(stream, p)
              : LaunchM<Tag, uint16_t, false, false>(stream, p);
}

// What only the GPU kernel needs beyond MakePlan's checks.
inline ffi::Error CheckGpu(const Plan& p) {
  if (p.m < 1 || p.m > 16) return Bad("M must be 1..16 on the GPU, got " + std::to_string(p.m));
  if (p.k % 8) return Bad("K must be a multiple of 8, got " + std::to_string(p.k));
  if (p.dtype != ffi::DataType::BF16 && p.dtype != ffi::DataType::F16) {
    return Bad("the GPU kernel takes bfloat16 or float16");
  }
  return ffi::Error::Success();
}

// Launches a plan that passed CheckGpu.
inline ffi::Error LaunchGemv(cudaStream_t stream, const Plan& p) {
  return p.dtype == ffi::DataType::BF16 ? LaunchTag<Bf16Tag>(stream, p)
                                        : LaunchTag<F16Tag>(stream, p);
}

}  // namespace
}  // namespace edgellm::gemv
