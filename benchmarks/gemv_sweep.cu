// GEMV launch-configuration sweep on the GPU (a benchmark, not a test): every Llama-3.2-1B
// projection at M = 1 and M = 8/16 (tensor-core kernel and cuBLAS at M = 8/16), 16 distinct weight copies (as 16 layers, past L2) launched back to back
// in a CUDA graph, for each (rows per block kR, loads in flight kPre, warps per block) of the
// fused GEMV kernel (edgellm_fn/ffi/gemv_kernels.cuh); then the whole 16-layer GEMV chain with the
// shipped configurations. Prints GB/s of weights streamed. (For the copy ceiling use
// benchmarks/decode_kernels.py --sections ceiling.)
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -I edgellm_fn/ffi -I "$(python -c 'import jax.ffi;
//     print(jax.ffi.include_dir())')" benchmarks/gemv_sweep.cu -lcublas -o gemv_sweep && ./gemv_sweep
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gemv_kernels.cuh"

using edgellm::cuda::Bf16Tag;
using edgellm::gemv::Launch;
using edgellm::gemv::Plan;

#define CHECK(x)                                                                    \
  do {                                                                              \
    cudaError_t e_ = (x);                                                           \
    if (e_ != cudaSuccess) {                                                        \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                 \
    }                                                                               \
  } while (0)

__global__ void Fill(uint16_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    // bf16 in [-1/64, 1/64): sign, exponent 121, random mantissa
    p[i] = static_cast<uint16_t>(((h & 1u) << 15) | (121u << 7) | ((h >> 1) & 0x7f));
  }
}

constexpr int kLayers = 16;

struct Shape {
  const char* name;
  int64_t n, k;
  bool norm, gated, residual;
};

struct Buffers {
  std::vector<uint16_t*> w;
  uint16_t *x, *nw, *res, *out;
};

uint16_t* Alloc(size_t n, uint32_t seed) {
  uint16_t* p;
  CHECK(cudaMalloc(&p, n * 2));
  Fill<<<1024, 256>>>(p, n, seed);
  return p;
}

Buffers Make(const Shape& s) {
  Buffers b;
  for (int l = 0; l < kLayers; ++l) b.w.push_back(Alloc(s.n * s.k, 17 + l));
  b.x = Alloc(16 * s.k, 3);
  b.nw = Alloc(s.k, 5);
  b.res = Alloc(16 * s.n, 7);
  b.out = Alloc(16 * s.n, 9);
  CHECK(cudaDeviceSynchronize());  // Fill ran on the legacy stream
  return b;
}

Plan MakePlan(const Shape& s, const Buffers& b, int l, int m = 1) {
  Plan p;
  p.dtype = xla::ffi::DataType::BF16;
  p.out_dtype = xla::ffi::DataType::BF16;
  p.m = m;
  p.k = s.k;
  p.n = s.n;
  p.n_out = s.gated ? s.n / 2 : s.n;
  p.x = b.x;
  p.w = b.w[l];
  p.norm_weight = s.norm ? b.nw : nullptr;
  p.residual = s.residual ? b.res : nullptr;
  p.out = b.out;
  p.eps = 1e-5f;
  p.gated = s.gated;
  return p;
}

using LaunchFn = xla::ffi::Error (*)(cudaStream_t, const Plan&);

// Median-free: the mean of 20 graph replays after 3 warm-ups, in microseconds per launch.
template <typename Body>
float TimeGraph(cudaStream_t st, int launches, Body body) {
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
  body();
  CHECK(cudaStreamEndCapture(st, &g));
  CHECK(cudaGraphInstantiate(&ge, g, 0));
  for (int i = 0; i < 3; ++i) CHECK(cudaGraphLaunch(ge, st));
  cudaEvent_t a, z;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&z));
  CHECK(cudaEventRecord(a, st));
  constexpr int kReps = 20;
  for (int i = 0; i < kReps; ++i) CHECK(cudaGraphLaunch(ge, st));
  CHECK(cudaEventRecord(z, st));
  CHECK(cudaEventSynchronize(z));
  float ms;
  CHECK(cudaEventElapsedTime(&ms, a, z));
  CHECK(cudaGraphExecDestroy(ge));
  CHECK(cudaGraphDestroy(g));
  return ms * 1e3f / (kReps * launches);
}

template <bool kNorm, bool kGated, int kR, int kPre, int kW, int kM = 1>
xla::ffi::Error Run(cudaStream_t st, const Plan& p) {
  return Launch<Bf16Tag, uint16_t, kM, kR, kPre, kNorm, kGated, kW>(st, p);
}

template <bool kNorm, bool kGated, int kNT, int kW, int kPre>
xla::ffi::Error RunMma(cudaStream_t st, const Plan& p) {
  return edgellm::gemv::LaunchMma<Bf16Tag, uint16_t, kNT, kW, kPre, kNorm, kGated>(st, p);
}

// Largest |a - b| / max|b| over the first m x n_out outputs of two runs (a check, not a test).
float RelDiff(const uint16_t* a, const uint16_t* b, size_t n) {
  std::vector<uint16_t> ha(n), hb(n);
  CHECK(cudaMemcpy(ha.data(), a, n * 2, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(hb.data(), b, n * 2, cudaMemcpyDeviceToHost));
  auto f = [](uint16_t h) {
    uint32_t u = static_cast<uint32_t>(h) << 16;
    float v;
    std::memcpy(&v, &u, 4);
    return v;
  };
  float worst = 0.0f, scale = 0.0f;
  for (size_t i = 0; i < n; ++i) {
    worst = std::fmax(worst, std::fabs(f(ha[i]) - f(hb[i])));
    scale = std::fmax(scale, std::fabs(f(hb[i])));
  }
  return worst / scale;
}

// M = 8 or 16 rows: the CUDA-core kernel's configurations, the tensor-core kernel's (kW warps,
// kPre k-steps in flight) and cuBLAS (bf16 GEMM, f32 accumulate, the plain product without the
// fused norm/gate/residual, so cuBLAS is favoured) on the same weights. Each tensor-core
// configuration's output is compared with the CUDA-core kernel's (max abs diff / max |out|).
template <int kM, bool kNorm, bool kGated>
void SweepM(cudaStream_t st, cublasHandle_t h, const Shape& s) {
  constexpr int kNT = kM / 8;
  struct Cfg {
    const char* kind;
    int r, pre, w;
    LaunchFn fn;
  };
  const Cfg cfgs[] = {
#define C(R, P, W) {"cuda-core", R, P, W, Run<kNorm, kGated, R, P, W, kM>}
#define T(W, P) {"mma", 16, P, W, RunMma<kNorm, kGated, kNT, W, P>}
      C(4, 1, 8), C(4, 2, 8), C(2, 1, 4), C(4, 1, 4),
      T(2, 2), T(2, 4), T(4, 2), T(4, 4), T(4, 8), T(8, 2), T(8, 4), T(8, 8), T(16, 2), T(16, 4),
      T(16, 8), T(32, 2), T(32, 4),
#undef C
#undef T
  };
  Buffers b = Make(s);
  uint16_t* want;
  const size_t n_out = static_cast<size_t>(kM) * (s.gated ? s.n / 2 : s.n);
  CHECK(cudaMalloc(&want, n_out * 2));
  Run<kNorm, kGated, 4, 1, 8, kM>(st, MakePlan(s, b, 0, kM));
  CHECK(cudaMemcpyAsync(want, b.out, n_out * 2, cudaMemcpyDeviceToDevice, st));
  CHECK(cudaStreamSynchronize(st));
  const double bytes = static_cast<double>(s.n) * s.k * 2;
  for (const Cfg& c : cfgs) {
    const float us = TimeGraph(st, kLayers, [&] {
      for (int l = 0; l < kLayers; ++l) c.fn(st, MakePlan(s, b, l, kM));
    });
    c.fn(st, MakePlan(s, b, 0, kM));
    CHECK(cudaStreamSynchronize(st));
    std::printf("m%d %-8s %-9s kR=%2d kPre=%d warps=%2d  %7.2f us  %6.0f GB/s  diff %.1e\n", kM,
                s.name, c.kind, c.r, c.pre, c.w, us, bytes / us / 1e3,
                RelDiff(b.out, want, n_out));
  }
  const float alpha = 1.0f, beta = 0.0f;
  const float us = TimeGraph(st, kLayers, [&] {
    for (int l = 0; l < kLayers; ++l) {
      // y^T [n, m] = W [n, k] (row-major = column-major k x n, transposed) x^T [k, m]
      cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, s.n, kM, s.k, &alpha, b.w[l], CUDA_R_16BF, s.k,
                   b.x, CUDA_R_16BF, s.k, &beta, b.out, CUDA_R_16BF, s.n, CUBLAS_COMPUTE_32F,
                   CUBLAS_GEMM_DEFAULT);
    }
  });
  std::printf("m%d %-8s cuBLAS GemmEx                    %7.2f us  %6.0f GB/s\n", kM, s.name, us,
              bytes / us / 1e3);
  for (uint16_t* w : b.w) CHECK(cudaFree(w));
  CHECK(cudaFree(want));
}

template <bool kNorm, bool kGated>
void Sweep(cudaStream_t st, const Shape& s) {
  struct Cfg {
    int r, pre, w;
    LaunchFn fn;
  };
  const Cfg cfgs[] = {
#define C(R, P, W) {R, P, W, Run<kNorm, kGated, R, P, W>}
      C(2, 1, 8), C(4, 1, 8), C(8, 1, 8), C(2, 2, 8), C(4, 2, 8), C(8, 2, 8), C(4, 4, 8),
      C(2, 4, 8), C(2, 1, 4), C(4, 1, 4), C(8, 1, 4), C(4, 2, 4), C(2, 4, 4), C(4, 4, 4),
      C(2, 8, 4), C(4, 1, 16), C(2, 2, 16), C(2, 1, 2), C(4, 2, 2), C(2, 4, 2), C(4, 4, 2),
#undef C
  };
  Buffers b = Make(s);
  const double bytes = static_cast<double>(s.n) * s.k * 2;
  for (const Cfg& c : cfgs) {
    if (kGated && c.r < 2) continue;
    const float us = TimeGraph(st, kLayers, [&] {
      for (int l = 0; l < kLayers; ++l) c.fn(st, MakePlan(s, b, l));
    });
    std::printf("sweep %-8s kR=%d kPre=%d warps=%2d  %7.2f us  %6.0f GB/s\n", s.name, c.r, c.pre,
                c.w, us, bytes / us / 1e3);
  }
}

int main(int argc, char** argv) {
  cudaStream_t st;
  CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  const Shape qkv{"qkv", 3072, 2048, true, false, false};
  const Shape o{"o", 2048, 2048, false, false, true};
  const Shape gu{"gate_up", 16384, 2048, true, true, false};
  const Shape down{"down", 2048, 8192, false, false, true};
  const bool m1 = argc < 2 || std::string(argv[1]) != "m8";
  if (m1) {
    Sweep<true, false>(st, qkv);
    Sweep<false, false>(st, o);
    Sweep<true, true>(st, gu);
    Sweep<false, false>(st, down);
  }
  cublasHandle_t h;
  cublasCreate(&h);
  cublasSetStream(h, st);
  SweepM<8, true, false>(st, h, qkv);
  SweepM<8, false, false>(st, h, o);
  SweepM<8, true, true>(st, h, gu);
  SweepM<8, false, false>(st, h, down);
  SweepM<16, true, true>(st, h, gu);
  SweepM<16, false, false>(st, h, down);
  if (!m1) return 0;
  // The 16-layer chain with the shipped configurations (LaunchGemv), as in a decode step.
  Buffers bq = Make(qkv), bo = Make(o), bg = Make(gu), bd = Make(down);
  const double bytes = 2.0 * kLayers * (qkv.n * qkv.k + o.n * o.k + gu.n * gu.k + down.n * down.k);
  const float us = TimeGraph(st, 1, [&] {
    for (int l = 0; l < kLayers; ++l) {
      edgellm::gemv::LaunchGemv(st, MakePlan(qkv, bq, l));
      edgellm::gemv::LaunchGemv(st, MakePlan(o, bo, l));
      edgellm::gemv::LaunchGemv(st, MakePlan(gu, bg, l));
      edgellm::gemv::LaunchGemv(st, MakePlan(down, bd, l));
    }
  });
  std::printf("chain 16 layers x 4 GEMVs (shipped configs)  %8.1f us  %6.0f GB/s\n", us,
              bytes / us / 1e3);
  return 0;
}
