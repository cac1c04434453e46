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

template <typename Tag, typename OutT, bool kNorm, bool kGated>
ffi::Error LaunchM(cudaStream_t stream, const Plan& p) {
  if (p.m <= 1) return LaunchK<Tag, OutT, 1, kNorm, kGated>(stream, p);
  if (p.m <= 2) return LaunchK<Tag, OutT, 2, kNorm, kGated>(stream, p);
  if (p.m <= 4) return LaunchK<Tag, OutT, 4, kNorm, kGated>(stream, p);
  if (p.m <= 8) return LaunchK<Tag, OutT, 8, kNorm, kGated>(stream, p);
  return LaunchK<Tag, OutT, 16, kNorm, kGated>(stream, p);
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
