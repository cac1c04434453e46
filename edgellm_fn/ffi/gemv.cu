// CUDA XLA FFI handler of the fused decode GEMV (see gemv.h for the math).
//
// Memory-bound at small M: every weight byte is streamed once with 16-byte
// loads that bypass L1 (ld.global.nc.L1::no_allocate), rows [N, K] contiguous.
// A block stages x (normalised when the op has a norm) in shared memory once;
// each warp then computes kRows weight rows at a time (a gated op pairs rows
// j and N/2 + j), lanes striding over K, and reduces with shuffles. The grid is
// persistent (at most what is resident), so the norm prologue runs once per
// block. Launch work depends only on shapes: command-buffer compatible; no
// allocation, no synchronisation.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "gemv.h"
#include "numerics.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace edgellm::gemv {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = 4;  // weight rows per warp iteration
constexpr int kUnroll = 2;

struct Bf16Tag {};
struct F16Tag {};

__device__ __forceinline__ void Unpack(Bf16Tag, const uint4& v, float f[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

__device__ __forceinline__ void Unpack(F16Tag, const uint4& v, float f[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

__device__ __forceinline__ float Round(Bf16Tag, float x) {
  return __bfloat162float(__float2bfloat16_rn(x));
}
__device__ __forceinline__ float Round(F16Tag, float x) { return __half2float(__float2half_rn(x)); }
__device__ __forceinline__ uint16_t Bits(Bf16Tag, float x) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}
__device__ __forceinline__ uint16_t Bits(F16Tag, float x) {
  return __half_as_ushort(__float2half_rn(x));
}
__device__ __forceinline__ float Load(Bf16Tag, const uint16_t* p) {
  return __uint_as_float(static_cast<uint32_t>(*p) << 16);
}
__device__ __forceinline__ float Load(F16Tag, const uint16_t* p) {
  return __half2float(__ushort_as_half(*p));
}

__device__ __forceinline__ uint4 LoadStream(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

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

template <typename Tag, int kM>
__device__ __forceinline__ void StageNormed(const Plan& p, const uint4* x, uint4* xs);

// Stages x[M, K] (normalised when kNorm) into shared memory as uint16 rows.
template <typename Tag, int kM, bool kNorm>
__device__ __forceinline__ void StageX(const Plan& p, uint4* xs) {
  const int64_t kc = p.k / 8;
  const uint4* x = static_cast<const uint4*>(p.x);
  const int m_rows = static_cast<int>(p.m);
  if constexpr (!kNorm) {
    for (int64_t i = threadIdx.x; i < m_rows * kc; i += kThreads) xs[i] = x[i];
  } else {
    StageNormed<Tag, kM>(p, x, xs);
  }
}

template <typename Tag, int kM>
__device__ __forceinline__ void StageNormed(const Plan& p, const uint4* x, uint4* xs) {
  const int64_t kc = p.k / 8;
  const int m_rows = static_cast<int>(p.m);
  __shared__ float partial[kWarps][kM];
  __shared__ float scale[kM];
  float ss[kM];
#pragma unroll
  for (int m = 0; m < kM; ++m) {
    ss[m] = 0.0f;
    if (m < m_rows) {
      for (int64_t c = threadIdx.x; c < kc; c += kThreads) {
        float f[8];
        Unpack(Tag{}, x[m * kc + c], f);
#pragma unroll
        for (int e = 0; e < 8; ++e) ss[m] += f[e] * f[e];
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) ss[m] += __shfl_xor_sync(0xffffffffu, ss[m], off);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
#pragma unroll
    for (int m = 0; m < kM; ++m) partial[warp][m] = ss[m];
  }
  __syncthreads();
  if (threadIdx.x < kM) {
    float t = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) t += partial[w][threadIdx.x];
    scale[threadIdx.x] = 1.0f / sqrtf(t / static_cast<float>(p.k) + p.eps);
  }
  __syncthreads();
  const uint4* nw = static_cast<const uint4*>(p.norm_weight);
  for (int64_t i = threadIdx.x; i < m_rows * kc; i += kThreads) {
    const int m = static_cast<int>(i / kc);
    const int64_t c = i - m * kc;
    float f[8], g[8];
    Unpack(Tag{}, x[i], f);
    Unpack(Tag{}, nw[c], g);
    uint16_t out[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) out[e] = Bits(Tag{}, Round(Tag{}, f[e] * scale[m]) * g[e]);
    xs[i] = *reinterpret_cast<const uint4*>(out);
  }
}

template <typename Tag, typename OutT, int kM, bool kNorm, bool kGated>
__global__ void __launch_bounds__(kThreads) GemvKernel(const Plan p) {
  extern __shared__ uint4 xs[];
  StageX<Tag, kM, kNorm>(p, xs);
  __syncthreads();

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t kc = p.k / 8;
  const int m_rows = static_cast<int>(p.m);
  const uint4* w = static_cast<const uint4*>(p.w);
  const uint16_t* bias = static_cast<const uint16_t*>(p.bias);
  const uint16_t* res = static_cast<const uint16_t*>(p.residual);
  // Output units per warp iteration: kRows rows, or kRows/2 gated pairs.
  constexpr int kUnits = kGated ? kRows / 2 : kRows;
  const int64_t units = p.n_out;
  const int64_t groups = (units + kUnits - 1) / kUnits;

  for (int64_t grp = static_cast<int64_t>(blockIdx.x) * kWarps + warp; grp < groups;
       grp += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t u0 = grp * kUnits;
    int64_t row[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int64_t u = u0 + (kGated ? r % kUnits : r);
      const int64_t clamped = u < units ? u : units - 1;  // idle rows re-read a valid row
      row[r] = kGated && r >= kUnits ? units + clamped : clamped;
    }
    float acc[kRows][kM];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int m = 0; m < kM; ++m) acc[r][m] = 0.0f;

    int64_t c = lane;
    for (; c + 32 * (kUnroll - 1) < kc; c += 32 * kUnroll) {
      uint4 wv[kUnroll][kRows];
#pragma unroll
      for (int s = 0; s < kUnroll; ++s)
#pragma unroll
        for (int r = 0; r < kRows; ++r) wv[s][r] = LoadStream(w + row[r] * kc + c + 32 * s);
#pragma unroll
      for (int s = 0; s < kUnroll; ++s) {
        float wf[kRows][8];
#pragma unroll
        for (int r = 0; r < kRows; ++r) Unpack(Tag{}, wv[s][r], wf[r]);
#pragma unroll
        for (int m = 0; m < kM; ++m) {
          if (m < m_rows) {
            float xf[8];
            Unpack(Tag{}, xs[m * kc + c + 32 * s], xf);
#pragma unroll
            for (int r = 0; r < kRows; ++r)
#pragma unroll
              for (int e = 0; e < 8; ++e) acc[r][m] = fmaf(xf[e], wf[r][e], acc[r][m]);
          }
        }
      }
    }
    for (; c < kc; c += 32) {
      float wf[kRows][8];
#pragma unroll
      for (int r = 0; r < kRows; ++r) Unpack(Tag{}, LoadStream(w + row[r] * kc + c), wf[r]);
#pragma unroll
      for (int m = 0; m < kM; ++m) {
        if (m < m_rows) {
          float xf[8];
          Unpack(Tag{}, xs[m * kc + c], xf);
#pragma unroll
          for (int r = 0; r < kRows; ++r)
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[r][m] = fmaf(xf[e], wf[r][e], acc[r][m]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int m = 0; m < kM; ++m)
#pragma unroll
        for (int off = 16; off > 0; off >>= 1)
          acc[r][m] += __shfl_xor_sync(0xffffffffu, acc[r][m], off);

    // Epilogue: output (unit o, row m) is written by lane (o * kM + m) % 32.
#pragma unroll
    for (int o = 0; o < kUnits; ++o) {
#pragma unroll
      for (int m = 0; m < kM; ++m) {
        const int64_t u = u0 + o;
        if (lane != (o * kM + m) % 32 || m >= m_rows || u >= units) continue;
        float y;
        if constexpr (kGated) {
          float g = Round(Tag{}, acc[o][m]), up = Round(Tag{}, acc[kUnits + o][m]);
          if (bias) {
            g = Round(Tag{}, g + Load(Tag{}, bias + u));
            up = Round(Tag{}, up + Load(Tag{}, bias + units + u));
          }
          y = Round(Tag{}, Act<Tag>(p.activation, g) * up);
        } else if constexpr (sizeof(OutT) == 4) {
          y = acc[o][m] + (bias ? Load(Tag{}, bias + u) : 0.0f);
        } else {
          y = Round(Tag{}, acc[o][m]);
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
  }
}

int SmCount() {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return sms > 0 ? sms : 1;
}

template <typename Tag, typename OutT, int kM, bool kNorm, bool kGated>
ffi::Error Launch(cudaStream_t stream, const Plan& p) {
  auto kernel = GemvKernel<Tag, OutT, kM, kNorm, kGated>;
  const size_t smem = static_cast<size_t>(p.m) * p.k * sizeof(uint16_t);
  if (smem > 48 * 1024) {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(smem));
  }
  constexpr int kUnits = kGated ? kRows / 2 : kRows;
  const int64_t groups = (p.n_out + kUnits - 1) / kUnits;
  int64_t blocks = (groups + kWarps - 1) / kWarps;
  int per_sm = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
  const int64_t resident = static_cast<int64_t>(per_sm > 0 ? per_sm : 1) * SmCount();
  if (blocks > resident) blocks = resident;
  kernel<<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(p);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) {
    return ffi::Error::Internal(std::string("edgellm_gemv: kernel launch failed: ") +
                                cudaGetErrorString(err));
  }
  return ffi::Error::Success();
}

template <typename Tag, typename OutT, bool kNorm, bool kGated>
ffi::Error LaunchM(cudaStream_t stream, const Plan& p) {
  if (p.m <= 1) return Launch<Tag, OutT, 1, kNorm, kGated>(stream, p);
  if (p.m <= 2) return Launch<Tag, OutT, 2, kNorm, kGated>(stream, p);
  if (p.m <= 4) return Launch<Tag, OutT, 4, kNorm, kGated>(stream, p);
  if (p.m <= 8) return Launch<Tag, OutT, 8, kNorm, kGated>(stream, p);
  return Launch<Tag, OutT, 16, kNorm, kGated>(stream, p);
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

ffi::Error GemvDispatch(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer w,
                        ffi::AnyBuffer norm_weight, ffi::AnyBuffer bias, ffi::AnyBuffer residual,
                        ffi::Result<ffi::AnyBuffer> out, float eps, bool gated,
                        int32_t activation) {
  Plan p;
  if (auto e = MakePlan(&p, x, w, norm_weight, bias, residual, *out, eps, gated, activation);
      e.failure()) {
    return e;
  }
  if (p.m < 1 || p.m > 16) return Bad("M must be 1..16 on the GPU, got " + std::to_string(p.m));
  if (p.k % 8) return Bad("K must be a multiple of 8, got " + std::to_string(p.k));
  if (p.m * p.k * 2 > 200 * 1024) return Bad("M*K too large for the staged x (<= 200 KiB)");
  switch (p.dtype) {
    case ffi::DataType::BF16:
      return LaunchTag<Bf16Tag>(stream, p);
    case ffi::DataType::F16:
      return LaunchTag<F16Tag>(stream, p);
    default:
      return Bad("the GPU kernel takes bfloat16 or float16");
  }
}

}  // namespace
}  // namespace edgellm::gemv

XLA_FFI_DEFINE_HANDLER_SYMBOL(GemvCuda, edgellm::gemv::GemvDispatch,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<xla::ffi::AnyBuffer>()      // x
                                  .Arg<xla::ffi::AnyBuffer>()      // w
                                  .Arg<xla::ffi::AnyBuffer>()      // norm_weight
                                  .Arg<xla::ffi::AnyBuffer>()      // bias
                                  .Arg<xla::ffi::AnyBuffer>()      // residual
                                  .Ret<xla::ffi::AnyBuffer>()      // out
                                  .Attr<float>("eps")              // eps
                                  .Attr<bool>("gated")             // gated
                                  .Attr<int32_t>("activation"),   // activation
                              {xla::ffi::Traits::kCmdBufferCompatible});
