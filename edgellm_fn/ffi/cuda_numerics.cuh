// Device helpers shared by the CUDA decode kernels: 16-bit storage tags, round-to-nearest
// conversions (bit-exact with XLA's converts), 16-byte unpacking and streaming loads, and
// programmatic dependent launch (PDL, sm_90): a kernel launched with `pdl` may start while the
// previous kernel on the stream finishes; it must call WaitForPrevious() before it reads what
// that kernel wrote or writes anything. Without `pdl` both device calls are no-ops.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

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

// Lets the next kernel on the stream (if launched with pdl) be scheduled now.
__device__ __forceinline__ void LaunchDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Blocks until the previous kernel on the stream has completed and its writes are visible.
__device__ __forceinline__ void WaitForPrevious() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// <<<grid, block, 0, stream>>>, as a programmatic dependent launch when `pdl`.
template <typename... Params, typename... Args>
cudaError_t LaunchKernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
                         bool pdl, Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  config.attrs = attr;
  config.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace edgellm::cuda
