// Row gather from the teacher store: out[i, :] = src[ids[i], :], multi-threaded, bounds-checked.
//
// The store's reader calls this on a zero-copy tensor over its memory map; every row is C * itemsize
// raw bytes, so the op is dtype-agnostic (fp32, fp16, bf16, int32 top-k indices alike). Random rows
// of a file in the page cache are latency-bound (TLB and cache misses), so each thread copies several
// rows side by side and prefetches a few rows ahead, including the page a row runs into.
//
// Threads: the calling thread copies chunks of rows taken from an atomic counter, and helpers from a
// small pool of our own (HelperPool) take chunks from the same counter. Unlike an OpenMP parallel
// region (at::parallel_for), nothing waits at a barrier for a helper that the OS has not scheduled
// yet: on a busy machine the caller simply does more of the chunks. (Measured on a shared 2-core box:
// a parallel_for gather of 2 MB took 0.3 ms or, when the second core was taken, 16-20 ms; this scheme
// stays at the single-thread time or better.) The caller waits only for chunks a helper has claimed;
// a helper that picks a job up after the gather finished finds no chunk left and touches nothing.
//
// Fork safety: a process forked from a parent that started the helper threads has no such threads,
// so in a forked child the op copies on the calling thread (the pid-checked reader re-maps the store).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

namespace {

constexpr int64_t kPrefetchRows = 8;       // rows ahead of the copy
constexpr int64_t kInterleave = 8;         // rows copied side by side
constexpr int64_t kChunkBytes = 512 << 10;  // rows per claimed chunk: ~50 us of copying
constexpr int64_t kSpinMicros = 200;        // a helper's wait for the next job before it blocks

std::atomic<bool> forked_child{false};
const int fork_handler_registered =
    pthread_atfork(nullptr, nullptr, [] { forked_child.store(true, std::memory_order_relaxed); });

inline void prefetch_row(const char* p, int64_t bytes) {
  // The first lines start the page walk and the hardware prefetcher follows the run inside the row;
  // a row that crosses into the next page gets that page's first lines too.
  const int64_t head = std::min<int64_t>(4, (bytes + 63) / 64);
  for (int64_t l = 0; l < head; ++l) __builtin_prefetch(p + 64 * l, 0, 0);
  const uintptr_t start = reinterpret_cast<uintptr_t>(p);
  const uintptr_t next_page = (start | 4095) + 1;
  if (next_page < start + static_cast<uintptr_t>(bytes)) {
    __builtin_prefetch(reinterpret_cast<const char*>(next_page), 0, 0);
    __builtin_prefetch(reinterpret_cast<const char*>(next_page) + 64, 0, 0);
  }
}

struct Gather {
  const char* base;
  char* dst;
  const int64_t* ids;
  int64_t n, row_bytes, chunk_rows, num_chunks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  // Rows are copied kInterleave at a time, 64 bytes of each in turn: the loads of several rows are
  // in flight together, where a memcpy per row waits on one row's misses at a time (1.6-2x faster on
  // a 2-core EPYC VM; the sweep is in docs/design.md).
  void copy(int64_t begin, int64_t end) const {
    for (int64_t i = begin; i < std::min(end, begin + kPrefetchRows); ++i)
      prefetch_row(base + ids[i] * row_bytes, row_bytes);
    int64_t i = begin;
    for (; i + kInterleave <= end; i += kInterleave) {
      const char* s[kInterleave];
      char* d[kInterleave];
      for (int64_t k = 0; k < kInterleave; ++k) {
        if (i + k + kPrefetchRows < end) prefetch_row(base + ids[i + k + kPrefetchRows] * row_bytes, row_bytes);
        s[k] = base + ids[i + k] * row_bytes;
        d[k] = dst + (i + k) * row_bytes;
      }
      int64_t o = 0;
      for (; o + 64 <= row_bytes; o += 64)
        for (int64_t k = 0; k < kInterleave; ++k) std::memcpy(d[k] + o, s[k] + o, 64);
      if (o < row_bytes)
        for (int64_t k = 0; k < kInterleave; ++k) std::memcpy(d[k] + o, s[k] + o, row_bytes - o);
    }
    for (; i < end; ++i) std::memcpy(dst + i * row_bytes, base + ids[i] * row_bytes, row_bytes);
  }

  void work() {
    for (;;) {
      const int64_t c = next.fetch_add(1, std::memory_order_relaxed);
      if (c >= num_chunks) return;
      copy(c * chunk_rows, std::min(n, (c + 1) * chunk_rows));
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

// Helper threads of the gather, kept alive between calls. After a job a helper spins (yielding its
// core to anything runnable on each turn) for kSpinMicros before it blocks: gathers come in bursts
// (a loader's batch, the top-k store's two arrays, a benchmark), and waking a blocked thread costs
// tens of microseconds on a VM whose idle vCPU has halted, a large share of a 0.2 ms gather. The
// caller never depends on a helper: it copies every chunk nobody claimed (see Gather::work).
class HelperPool {
 public:
  static HelperPool& instance() {
    static HelperPool* pool = new HelperPool();  // never destroyed: its threads live until exit
    return *pool;
  }

  void post(const std::shared_ptr<Gather>& job, int64_t helpers) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (static_cast<int64_t>(threads_) < helpers) {
        std::thread([this, idx = threads_] { loop(idx); }).detach();
        ++threads_;
      }
      job_ = job;
      wanted_ = helpers;
      epoch_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
  }

 private:
  void loop(int64_t idx) {
    uint64_t seen = epoch_.load(std::memory_order_acquire);
    for (;;) {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
      while (epoch_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < deadline)
        std::this_thread::yield();
      std::shared_ptr<Gather> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return epoch_.load(std::memory_order_relaxed) != seen; });
        seen = epoch_.load(std::memory_order_relaxed);
        if (idx < wanted_) job = job_;
      }
      if (job) job->work();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> epoch_{0};
  std::shared_ptr<Gather> job_;
  int64_t wanted_ = 0;
  int64_t threads_ = 0;
};

void check_ids(const int64_t* ids, int64_t n, int64_t rows) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = ids[i];
    TORCH_CHECK_INDEX(id >= 0 && id < rows, "kdprune.gather_rows: sample id ", id, " at position ", i,
                      " is out of range [0, ", rows, "); the ids must come from the dataset the store "
                      "was written for");
  }
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
  const int64_t row_bytes = src.size(1) * static_cast<int64_t>(src.element_size());
  check_ids(idc.data_ptr<int64_t>(), n, src.size(0));
  if (n == 0 || row_bytes == 0) return out;

  auto g = std::make_shared<Gather>();
  g->base = static_cast<const char*>(src.data_ptr());
  g->dst = static_cast<char*>(out.data_ptr());
  g->ids = idc.data_ptr<int64_t>();
  g->n = n;
  g->row_bytes = row_bytes;
  g->chunk_rows = std::max<int64_t>(1, kChunkBytes / row_bytes);
  g->num_chunks = (n + g->chunk_rows - 1) / g->chunk_rows;
  const int64_t helpers = forked_child.load(std::memory_order_relaxed)
                              ? 0
                              : std::min<int64_t>(at::get_num_threads() - 1, g->num_chunks - 1);
  if (helpers > 0) HelperPool::instance().post(g, helpers);
  g->work();
  // Only chunks a helper claimed and is still copying are left; yield rather than spin, since on a
  // busy machine that helper may be waiting for this very core.
  while (g->done.load(std::memory_order_acquire) < g->num_chunks) std::this_thread::yield();
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(kdprune, m) {
  m.def("gather_rows(Tensor src, Tensor ids, Tensor(a!) out) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(kdprune, CPU, m) {
  m.impl("gather_rows", &gather_rows);
}
