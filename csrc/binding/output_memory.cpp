// The ops' large CPU outputs (8 MiB or more: the samples z, the (N, C) and (B, d) gradients).
// PyTorch's CPU allocator keeps no cache and glibc maps blocks over 32 MiB afresh, so each such
// output was new memory on every call, faulted in one 4 KiB page at a time on first touch and
// zeroed by the kernel: half of a mixture_sample forward at n = 10^5, K = 256 (47 ms against
// 19 ms from a kept block, 2 threads). They come instead from an allocator that keeps the blocks
// of freed outputs, most recently freed first, up to GMKERNELS_OUTPUT_CACHE_BYTES (read on every
// call; default kOutputCacheBytes, 0 keeps none), and hands an output a kept block of at least its
// size and at most twice it (the smallest such), else a fresh one. The tensors are ordinary
// (resizable: a resize goes through the same allocator).
//
// With GMKERNELS_HUGE_PAGES=1 (read on every call) a fresh block also asks for transparent huge
// pages over its 2 MiB-aligned interior (MADV_HUGEPAGE; effective where
// /sys/kernel/mm/transparent_hugepage/enabled says "always" or "madvise"): 512 times fewer
// faults. Off by default, by measurement on the 2-core VM this project measures on, before the
// cache (a virtio balloon there takes freed memory back from the guest, and huge pages are the
// blocks it takes): a class_pairwise_kl gradient penalty step at N = 10^5, C = 100 took 92-101 ms
// with it against 124-146 ms without, but its forward+backward took 81.6 against 52.5 ms at
// N = 1000, C = 10^4 and 670 against 320 ms at N = 10^6, C = 100 with other code's allocations
// between the calls. A hint only: nothing else changes where it is refused.
#include "output_memory.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>

#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__unix__)
#include <pthread.h>
#endif

namespace gmk {
namespace {

constexpr uintptr_t kHugePage = uintptr_t(1) << 21;
// Below 4 huge pages the unaligned ends are much of the block, and the faults few anyway.
constexpr int64_t kMinBytes = int64_t(4 * kHugePage);
constexpr size_t kAlignment = 64;  // c10's CPU alignment

void advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const char* setting = std::getenv("GMKERNELS_HUGE_PAGES");
  if (setting == nullptr || std::strcmp(setting, "1") != 0) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

struct Block {
  void* data;
  size_t capacity;
};

// The freed output blocks kept for the next outputs, most recently freed first.
class OutputCache {
 public:
  // The smallest kept block of at least `bytes` and at most twice that (so a small output never
  // pins a large block), else a fresh one; where the system has none to give, the kept blocks
  // are freed first and the request made once more.
  Block* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      Block* best = nullptr;
      std::list<Block*>::iterator best_at;
      for (auto it = kept_.begin(); it != kept_.end(); ++it) {
        const size_t capacity = (*it)->capacity;
        if (capacity >= bytes && capacity / 2 <= bytes &&
            (best == nullptr || capacity < best->capacity)) {
          best = *it;
          best_at = it;
        }
      }
      if (best != nullptr) {
        kept_.erase(best_at);
        kept_bytes_ -= best->capacity;
        return best;
      }
    }
    void* data = nullptr;
    if (posix_memalign(&data, kAlignment, bytes) != 0) {
      give_back(nullptr, 0);
      if (posix_memalign(&data, kAlignment, bytes) != 0) throw std::bad_alloc();
    }
    advise_huge_pages(data, static_cast<int64_t>(bytes));
    return new Block{data, bytes};
  }

  // Keeps `block` (nullptr: none) if it fits in `limit` bytes, then frees the least recently
  // kept blocks until what is kept fits.
  void give_back(Block* block, size_t limit) {
    std::list<Block*> freed;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (block != nullptr && block->capacity <= limit) {
        kept_.push_front(block);
        kept_bytes_ += block->capacity;
        block = nullptr;
      }
      while (kept_bytes_ > limit) {
        kept_bytes_ -= kept_.back()->capacity;
        freed.push_back(kept_.back());
        kept_.pop_back();
      }
    }
    if (block != nullptr) freed.push_back(block);
    for (Block* b : freed) {
      std::free(b->data);
      delete b;
    }
  }

  void lock() { mutex_.lock(); }
  void unlock() { mutex_.unlock(); }

  int64_t kept_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(kept_bytes_);
  }

 private:
  std::mutex mutex_;
  std::list<Block*> kept_;
  size_t kept_bytes_ = 0;
};

// Never destroyed: outputs may outlive static destruction at exit. A fork (a DataLoader's
// workers) while another thread holds the cache's lock would leave the child's copy locked for
// good: the lock is taken around every fork and released on both sides, as glibc does for malloc.
OutputCache& output_cache() {
  static OutputCache* cache = [] {
    OutputCache* made = new OutputCache();
#if defined(__unix__)
    pthread_atfork([] { output_cache().lock(); }, [] { output_cache().unlock(); },
                   [] { output_cache().unlock(); });
#endif
    return made;
  }();
  return *cache;
}

// GMKERNELS_OUTPUT_CACHE_BYTES into `limit` (kOutputCacheBytes where unset or empty); false where
// it is not a non-negative integer.
bool read_cache_limit(int64_t& limit) {
  const char* setting = std::getenv("GMKERNELS_OUTPUT_CACHE_BYTES");
  limit = kOutputCacheBytes;
  if (setting == nullptr || *setting == '\0') return true;
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(setting, &end, 10);
  // Digits only: strtoll alone takes a sign, leading spaces and a number before other text.
  const bool digits_only = std::isdigit(static_cast<unsigned char>(*setting)) && *end == '\0';
  if (!digits_only || errno != 0) return false;
  limit = value;
  return true;
}

// The outputs' deleter: the block goes back to the cache. It must not throw, so a setting made
// invalid after the allocation (which checked it) keeps nothing.
void return_block(void* context) {
  if (context == nullptr) return;
  int64_t limit = 0;
  if (!read_cache_limit(limit)) limit = 0;
  output_cache().give_back(static_cast<Block*>(context), static_cast<size_t>(limit));
}

class CachingOutputAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    if (bytes == 0) return {nullptr, nullptr, &return_block, c10::Device(c10::DeviceType::CPU)};
    Block* block = output_cache().take(bytes);
    return {block->data, block, &return_block, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }
};

CachingOutputAllocator caching_output_allocator;

}  // namespace

int64_t output_cache_limit() {
  int64_t limit = 0;
  TORCH_CHECK_VALUE(read_cache_limit(limit),
                    "GMKERNELS_OUTPUT_CACHE_BYTES must be a non-negative integer, got '",
                    std::getenv("GMKERNELS_OUTPUT_CACHE_BYTES"), "'");
  return limit;
}

int64_t output_cache_kept_bytes() { return output_cache().kept_bytes(); }

void release_output_cache() {
  output_cache().give_back(nullptr, 0);
}

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (int64_t size : sizes) numel *= size;
  const int64_t bytes = numel * static_cast<int64_t>(options.dtype().itemsize());
  if (!options.device().is_cpu() || bytes < kMinBytes) return at::empty(sizes, options);
  output_cache_limit();  // a bad setting fails here, not in a deleter
  return at::detail::empty_generic(sizes, &caching_output_allocator,
                                   c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   options.dtype().toScalarType(), std::nullopt);
}

at::Tensor empty_output_like(const at::Tensor& like) {
  return empty_output(like.sizes(), like.options());
}

}  // namespace gmk
