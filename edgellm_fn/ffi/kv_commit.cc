// CPU XLA FFI handler of the speculative-decoding KV commit: the accepted path's
// entries of every layer move into contiguous slots, in one call, in place.
// The nanobind module `_kv_commit` hands the handlers to jax.ffi (the CUDA one,
// kv_commit.cu, when built); kv_commit.py holds the wrapper and the pure-JAX twin
// `commit_kv_ref`.
//
// For each row b and k < n[b] (k < A), in every cache [B, H, C, D]:
//   cache[b, :, start[b] + k] = cache[b, :, min(start[b] + path[b, k], C - 1)]
// skipping destinations >= C. path is increasing with path[k] >= k, so walking
// k upwards reads every source before anything overwrites it.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "ffi_capsule.h"
#include "nanobind/nanobind.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;

namespace edgellm::commit {
namespace {

ffi::Error CheckIndex(const char* name, const ffi::AnyBuffer& x, size_t rank, int64_t batch) {
  auto dims = x.dimensions();
  if (x.element_type() != ffi::DataType::S32 || dims.size() != rank || dims[0] != batch) {
    return ffi::Error::InvalidArgument(std::string("commit_kv: ") + name +
                                       " must be int32 with rank " + std::to_string(rank) +
                                       " and the caches' batch " + std::to_string(batch));
  }
  return ffi::Error::Success();
}

// Moves every accepted entry of one cache whose elements are `bytes` wide.
void CommitOne(char* data, int64_t batch, int64_t heads, int64_t cap, int64_t row_bytes,
               const int32_t* start, const int32_t* path, const int32_t* n, int64_t a) {
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t count = std::min<int64_t>(std::max<int32_t>(n[b], 0), a);
    for (int64_t k = 0; k < count; ++k) {
      const int64_t dst = static_cast<int64_t>(start[b]) + k;
      if (dst < 0 || dst >= cap) continue;
      const int64_t src = std::min<int64_t>(static_cast<int64_t>(start[b]) + path[b * a + k],
                                            cap - 1);
      if (src == dst || src < 0) continue;
      for (int64_t h = 0; h < heads; ++h) {
        char* head = data + ((b * heads + h) * cap) * row_bytes;
        std::memmove(head + dst * row_bytes, head + src * row_bytes, row_bytes);
      }
    }
  }
}

ffi::Error CommitKvDispatch(ffi::AnyBuffer start, ffi::AnyBuffer path, ffi::AnyBuffer n,
                            ffi::RemainingArgs caches, ffi::RemainingRets outs) {
  if (caches.size() == 0 || caches.size() != outs.size()) {
    return ffi::Error::InvalidArgument("commit_kv: expected as many results as caches (>= 1)");
  }
  auto first = caches.get<ffi::AnyBuffer>(0);
  if (first.has_error()) return first.error();
  const int64_t batch = first->dimensions()[0];
  for (auto [name, x, rank] : {std::tuple{"start", &start, 1}, {"path", &path, 2}, {"n", &n, 1}}) {
    if (ffi::Error e = CheckIndex(name, *x, rank, batch); e.failure()) return e;
  }
  const int64_t a = path.dimensions()[1];
  const auto* start_p = static_cast<const int32_t*>(start.untyped_data());
  const auto* path_p = static_cast<const int32_t*>(path.untyped_data());
  const auto* n_p = static_cast<const int32_t*>(n.untyped_data());
  for (size_t i = 0; i < caches.size(); ++i) {
    auto in = caches.get<ffi::AnyBuffer>(i);
    auto out = outs.get<ffi::AnyBuffer>(i);
    if (in.has_error()) return in.error();
    if (out.has_error()) return out.error();
    auto dims = in->dimensions();
    if (dims.size() != 4 || dims[0] != batch || (*out)->size_bytes() != in->size_bytes()) {
      return ffi::Error::InvalidArgument("commit_kv: caches[" + std::to_string(i) +
                                         "] must be [B, H, C, D] with the batch of caches[0]");
    }
    char* data = static_cast<char*>((*out)->untyped_data());
    if (data != in->untyped_data()) {  // XLA did not alias it: start from a copy
      std::memcpy(data, in->untyped_data(), in->size_bytes());
    }
    const int64_t row_bytes = dims[3] * static_cast<int64_t>(ffi::ByteWidth(in->element_type()));
    CommitOne(data, batch, dims[1], dims[2], row_bytes, start_p, path_p, n_p, a);
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace edgellm::commit

using namespace edgellm::commit;  // NOLINT: handler symbols below are extern "C".

XLA_FFI_DEFINE_HANDLER_SYMBOL(CommitKvCpu, CommitKvDispatch,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // start
                                  .Arg<ffi::AnyBuffer>()  // path
                                  .Arg<ffi::AnyBuffer>()  // n
                                  .RemainingArgs()        // caches
                                  .RemainingRets());      // caches (aliased)

#ifdef EDGELLM_WITH_CUDA
XLA_FFI_DECLARE_HANDLER_SYMBOL(CommitKvCuda);  // kv_commit.cu
#endif

NB_MODULE(_kv_commit, m) {
  m.def("registrations", []() {
    nb::dict cpu;
    cpu["edgellm_commit_kv"] = edgellm::EncapsulateFfiHandler(CommitKvCpu);
    nb::dict platforms;
    platforms["cpu"] = cpu;
#ifdef EDGELLM_WITH_CUDA
    nb::dict cuda;
    cuda["edgellm_commit_kv"] = edgellm::EncapsulateFfiHandler(CommitKvCuda);
    platforms["CUDA"] = cuda;
#endif
    return platforms;
  }, "Handler capsules by platform: {'cpu': {target: capsule}, 'CUDA': ... when built}.");
}
