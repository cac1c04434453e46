// Device helpers shared by the CUDA decode kernels: 16-bit storage tags, round-to-nearest
// conversions (bit-exact with XLA's converts), 16-byte unpacking and streaming loads.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace edgellm::cuda {

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
__device__ __forceinline__ float Load(Bf16Tag, uint16_t h) {
  return __uint_as_float(static_cast<uint32_t>(h) << 16);
}
__device__ __forceinline__ float Load(F16Tag, uint16_t h) { return __half2float(__ushort_as_half(h)); }

__device__ __forceinline__ uint4 LoadStream(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

}  // namespace edgellm::cuda
