// CUDA XLA FFI handler of the speculative-decoding KV commit (the math and the CPU handler are
// in kv_commit.cc; the pure-JAX twin is runtime/spec_tree.commit_kv_ref). Every cache of the
// call is updated in ONE launch: grid (x: 4- or 2-byte words of a row, y: head, z: cache); a
// thread owns one word of one head and, for each batch row, first reads that word of all the
// accepted path's source slots, then writes them to the contiguous destination slots, so no
// source is overwritten before it is read (threads never share a word). Launch work depends
// only on shapes: command-buffer compatible; no allocation, no synchronisation.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "xla/ffi/api/ffi.h"

#if CUDART_VERSION < 12010
#error "kv_commit.cu passes a 5 KiB kernel parameter table: needs CUDA >= 12.1"
#endif

namespace ffi = xla::ffi;

namespace edgellm::commit {
namespace {

constexpr int kMaxCaches = 256;  // per launch; larger calls are split into several launches
constexpr int kMaxAccept = 64;   // accepted path length A (tree levels + 1) the kernel holds
constexpr int kThreads = 128;

struct CommitTable {
  void* data[kMaxCaches];
  int32_t heads[kMaxCaches];
  int32_t cap[kMaxCaches];
  int32_t words[kMaxCaches];  // words per [D] row
  int32_t num = 0;
  int32_t batch = 0;
  int32_t accept = 0;  // A: path is [B, A]
  const int32_t* start = nullptr;
  const int32_t* path = nullptr;
  const int32_t* n = nullptr;
};

template <typename W>
__global__ void CommitKernel(const __grid_constant__ CommitTable t) {
  const int c = blockIdx.z, h = blockIdx.y;
  const int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= t.num || h >= t.heads[c] || w >= t.words[c]) return;
  const int64_t cap = t.cap[c], words = t.words[c];
  W vals[kMaxAccept];
  for (int b = 0; b < t.batch; ++b) {
    W* head = static_cast<W*>(t.data[c]) + ((static_cast<int64_t>(b) * t.heads[c] + h) * cap) * words;
    const int64_t start = t.start[b];
    const int count = min(max(t.n[b], 0), t.accept);
    for (int k = 0; k < count; ++k) {  // every source first
      const int64_t src = min(start + t.path[b * t.accept + k], cap - 1);
      vals[k] = src >= 0 ? head[src * words + w] : W{};
    }
    for (int k = 0; k < count; ++k) {  // then the destinations (as kv_commit.cc skips them)
      const int64_t dst = start + k;
      const int64_t src = min(start + t.path[b * t.accept + k], cap - 1);
      if (dst < 0 || dst >= cap || src == dst || src < 0) continue;
      head[dst * words + w] = vals[k];
    }
  }
}

ffi::Error Bad(const std::string& what) { return ffi::Error::InvalidArgument("commit_kv: " + what); }

ffi::Error CommitKvCudaDispatch(cudaStream_t stream, ffi::AnyBuffer start, ffi::AnyBuffer path,
                                ffi::AnyBuffer n, ffi::RemainingArgs caches,
                                ffi::RemainingRets outs) {
  if (caches.size() == 0 || caches.size() != outs.size()) {
    return Bad("expected as many results as caches (>= 1)");
  }
  auto first = caches.get<ffi::AnyBuffer>(0);
  if (first.has_error()) return first.error();
  const int64_t batch = first->dimensions()[0];
  auto index_ok = [&](const ffi::AnyBuffer& x, size_t rank) {
    auto d = x.dimensions();
    return x.element_type() == ffi::DataType::S32 && d.size() == rank && d[0] == batch;
  };
  if (!index_ok(start, 1) || !index_ok(path, 2) || !index_ok(n, 1)) {
    return Bad("start [B], path [B, A] and n [B] must be int32 with the caches' batch " +
               std::to_string(batch));
  }
  const int64_t accept = path.dimensions()[1];
  if (accept > kMaxAccept) {
    return Bad("path has " + std::to_string(accept) + " entries per row (the CUDA handler holds " +
               "at most " + std::to_string(kMaxAccept) + ")");
  }
  // Pass 1: shapes, copies where XLA did not alias, and the word size every row allows.
  bool words4 = true;
  for (size_t i = 0; i < caches.size(); ++i) {
    auto in = caches.get<ffi::AnyBuffer>(i);
    auto out = outs.get<ffi::AnyBuffer>(i);
    if (in.has_error()) return in.error();
    if (out.has_error()) return out.error();
    auto d = in->dimensions();
    if (d.size() != 4 || d[0] != batch || (*out)->size_bytes() != in->size_bytes()) {
      return Bad("caches[" + std::to_string(i) + "] must be [B, H, C, D] with the batch of " +
                 "caches[0]");
    }
    const int64_t row_bytes = d[3] * static_cast<int64_t>(ffi::ByteWidth(in->element_type()));
    words4 = words4 && row_bytes % 4 == 0;
    if ((*out)->untyped_data() != in->untyped_data()) {
      if (cudaError_t e = cudaMemcpyAsync((*out)->untyped_data(), in->untyped_data(),
                                          in->size_bytes(), cudaMemcpyDeviceToDevice, stream);
          e != cudaSuccess) {
        return ffi::Error::Internal(std::string("commit_kv: copy failed: ") +
                                    cudaGetErrorString(e));
      }
    }
  }
  // Pass 2: launches of up to kMaxCaches caches each.
  const int word_bytes = words4 ? 4 : 2;
  for (size_t lo = 0; lo < caches.size(); lo += kMaxCaches) {
    CommitTable t;
    t.batch = static_cast<int32_t>(batch);
    t.accept = static_cast<int32_t>(accept);
    t.start = static_cast<const int32_t*>(start.untyped_data());
    t.path = static_cast<const int32_t*>(path.untyped_data());
    t.n = static_cast<const int32_t*>(n.untyped_data());
    int32_t max_heads = 0, max_words = 0;
    const size_t hi = std::min(caches.size(), lo + kMaxCaches);
    for (size_t i = lo; i < hi; ++i) {
      auto in = caches.get<ffi::AnyBuffer>(i);
      auto out = outs.get<ffi::AnyBuffer>(i);
      auto d = in->dimensions();
      const int64_t row_bytes = d[3] * static_cast<int64_t>(ffi::ByteWidth(in->element_type()));
      const int j = t.num++;
      t.data[j] = (*out)->untyped_data();
      t.heads[j] = static_cast<int32_t>(d[1]);
      t.cap[j] = static_cast<int32_t>(d[2]);
      t.words[j] = static_cast<int32_t>(row_bytes / word_bytes);
      max_heads = std::max(max_heads, t.heads[j]);
      max_words = std::max(max_words, t.words[j]);
    }
    if (max_heads == 0 || max_words == 0) continue;
    const dim3 grid((max_words + kThreads - 1) / kThreads, max_heads, t.num);
    if (words4) {
      CommitKernel<uint32_t><<<grid, kThreads, 0, stream>>>(t);
    } else {
      CommitKernel<uint16_t><<<grid, kThreads, 0, stream>>>(t);
    }
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) {
      return ffi::Error::Internal(std::string("commit_kv: kernel launch failed: ") +
                                  cudaGetErrorString(e));
    }
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace edgellm::commit

XLA_FFI_DEFINE_HANDLER_SYMBOL(CommitKvCuda, edgellm::commit::CommitKvCudaDispatch,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<xla::ffi::AnyBuffer>()  // start
                                  .Arg<xla::ffi::AnyBuffer>()  // path
                                  .Arg<xla::ffi::AnyBuffer>()  // n
                                  .RemainingArgs()             // caches
                                  .RemainingRets(),            // caches (aliased)
                              {xla::ffi::Traits::kCmdBufferCompatible});
