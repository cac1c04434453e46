// Scalar helpers shared by the CPU and CUDA decode kernels: bf16/f16 <-> f32
// conversions with round-to-nearest-even (bit-exact with XLA's converts), and
// the activations of the Llama family. On the host these are plain C++; under
// nvcc the same functions are also __device__.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define EDGELLM_HD __host__ __device__ __forceinline__
#else
#define EDGELLM_HD inline
#endif

namespace edgellm::num {

EDGELLM_HD float BitsToFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

EDGELLM_HD uint32_t FloatToBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

EDGELLM_HD float Bf16ToFloat(uint16_t h) { return BitsToFloat(static_cast<uint32_t>(h) << 16); }

EDGELLM_HD uint16_t FloatToBf16(float f) {
  uint32_t u = FloatToBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

EDGELLM_HD float F16ToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0x1f) return BitsToFloat(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  if (exp == 0) {
    if (mant == 0) return BitsToFloat(sign);
    // subnormal: value = mant * 2^-24
    float v = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return BitsToFloat(sign | ((exp + 112u) << 23) | (mant << 13));
}

EDGELLM_HD uint16_t FloatToF16(float f) {
  uint32_t u = FloatToBits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return sign | 0x7e00u;           // NaN
  if (u >= 0x477ff000u) return sign | 0x7c00u;          // overflow (>= 65520) -> inf
  if (u < 0x38800000u) {                                // subnormal or zero in f16
    if (u < 0x33000000u) return sign;                   // < 2^-25 rounds to 0
    const uint32_t mant = (u & 0x7fffffu) | 0x800000u;  // implicit bit
    const int shift = 126 - static_cast<int>(u >> 23);  // 14 + (113 - exp)
    uint32_t half = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return sign | static_cast<uint16_t>(half);
  }
  uint32_t r = u - 0x38000000u;  // rebias exponent 127 -> 15
  r += 0xfffu + ((r >> 13) & 1u);
  return sign | static_cast<uint16_t>(r >> 13);
}

// Storage types: float (F32), uint16_t tagged by these structs (BF16 / F16).
struct Bf16 {
  uint16_t bits;
};
struct F16 {
  uint16_t bits;
};

EDGELLM_HD float ToFloat(float x) { return x; }
EDGELLM_HD float ToFloat(Bf16 x) { return Bf16ToFloat(x.bits); }
EDGELLM_HD float ToFloat(F16 x) { return F16ToFloat(x.bits); }

template <typename T>
EDGELLM_HD T FromFloat(float x);
template <>
EDGELLM_HD float FromFloat<float>(float x) {
  return x;
}
template <>
EDGELLM_HD Bf16 FromFloat<Bf16>(float x) {
  return Bf16{FloatToBf16(x)};
}
template <>
EDGELLM_HD F16 FromFloat<F16>(float x) {
  return F16{FloatToF16(x)};
}

// Rounds an f32 value to the precision of T (identity for float).
template <typename T>
EDGELLM_HD float Round(float x) {
  return ToFloat(FromFloat<T>(x));
}

// Activation ids (attribute `activation` of the gated GEMV).
enum Activation : int32_t { kSilu = 0, kRelu = 1, kGeluExact = 2, kGeluTanh = 3 };

EDGELLM_HD float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// act(g) in the model dtype T, rounding where XLA rounds (silu = g * sigmoid(g),
// sigmoid rounded first); the GELUs are composites in XLA and are rounded once.
template <typename T>
EDGELLM_HD float Activate(int32_t act, float g) {
  switch (act) {
    case kRelu:
      return g > 0.0f ? g : 0.0f;
    case kGeluExact:
      return Round<T>(0.5f * g * (1.0f + erff(g * 0.70710678118654752f)));
    case kGeluTanh: {
      const float c = 0.7978845608028654f * (g + 0.044715f * g * g * g);
      return Round<T>(0.5f * g * (1.0f + tanhf(c)));
    }
    default:
      return Round<T>(g * Round<T>(Sigmoid(g)));
  }
}

}  // namespace edgellm::num
