// Row gather from the teacher store: out[i, :] = src[ids[i], :], multi-threaded, bounds-checked.
//
// The store's reader calls this on a zero-copy tensor over its memory map; every row is one memcpy of
// C * itemsize bytes, so the op is dtype-agnostic (fp32, fp16, bf16, int32 top-k indices alike).
// Random rows of a file in the page cache are latency-bound (TLB and cache misses), so each thread
// prefetches a few rows ahead of the one it copies.
//
// Fork safety: GNU OpenMP's thread pool does not survive fork(), so a parallel region in a child forked
// after the parent used OpenMP hangs (torch's own ops included). DataLoader workers avoid this by
// running with one thread; to be safe in any forked reader (multiprocessing pools), the op notes the
// fork and copies on the calling thread there.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cstring>

namespace {

std::atomic<bool> forked_child{false};
const int fork_handler_registered =
    pthread_atfork(nullptr, nullptr, [] { forked_child.store(true, std::memory_order_relaxed); });

constexpr int64_t kPrefetchRows = 4;  // rows ahead; enough to overlap misses, small enough to stay in L1

void check_ids(const int64_t* ids, int64_t n, int64_t rows) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = ids[i];
    TORCH_CHECK_INDEX(id >= 0 && id < rows, "kdprune.gather_rows: sample id ", id, " at position ", i,
                " is out of range [0, ", rows, "); the ids must come from the dataset the store was "
                "written for");
  }
}

inline void prefetch_row(const char* p, int64_t bytes) {
  // One prefetch per cache line would flood the queue for long rows; the first lines start the page
  // walk and the hardware prefetcher follows the sequential run inside the row.
  const int64_t lines = bytes < 256 ? (bytes + 63) / 64 : 4;
  for (int64_t l = 0; l < lines; ++l) __builtin_prefetch(p + 64 * l, 0, 0);
}

at::Tensor gather_rows(const at::Tensor& src, const at::Tensor& ids, at::Tensor out) {
  TORCH_CHECK(src.device().is_cpu() && ids.device().is_cpu() && out.device().is_cpu(),
              "kdprune.gather_rows: src, ids and out must be CPU tensors");
  TORCH_CHECK(src.dim() == 2 && src.is_contiguous(), "kdprune.gather_rows: src must be a contiguous 2-D "
              "tensor [rows, cols], got shape ", src.sizes());
  TORCH_CHECK(ids.dim() == 1 && ids.scalar_type() == at::kLong,
              "kdprune.gather_rows: ids must be a 1-D int64 tensor, got ", ids.scalar_type(), " ", ids.sizes());
  TORCH_CHECK(out.dim() == 2 && out.is_contiguous() && out.size(0) == ids.size(0) &&
                  out.size(1) == src.size(1) && out.scalar_type() == src.scalar_type(),
              "kdprune.gather_rows: out must be a contiguous ", src.scalar_type(), " tensor of shape [",
              ids.size(0), ", ", src.size(1), "], got ", out.scalar_type(), " ", out.sizes());
  const at::Tensor idc = ids.contiguous();
  const int64_t n = idc.size(0);
  const int64_t rows = src.size(0);
  const int64_t row_bytes = src.size(1) * static_cast<int64_t>(src.element_size());
  const int64_t* id = idc.data_ptr<int64_t>();
  check_ids(id, n, rows);
  if (n == 0 || row_bytes == 0) return out;

  const char* base = static_cast<const char*>(src.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  // Roughly 64 KiB of copying per task: below that, thread wake-up costs more than it saves.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / row_bytes);
  auto copy = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < std::min(end, begin + kPrefetchRows); ++i)
      prefetch_row(base + id[i] * row_bytes, row_bytes);
    for (int64_t i = begin; i < end; ++i) {
      if (i + kPrefetchRows < end) prefetch_row(base + id[i + kPrefetchRows] * row_bytes, row_bytes);
      std::memcpy(dst + i * row_bytes, base + id[i] * row_bytes, row_bytes);
    }
  };
  if (forked_child.load(std::memory_order_relaxed)) {
    copy(0, n);
  } else {
    at::parallel_for(0, n, grain, copy);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(kdprune, m) {
  m.def("gather_rows(Tensor src, Tensor ids, Tensor(a!) out) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(kdprune, CPU, m) {
  m.impl("gather_rows", &gather_rows);
}
