#include "index/page_prefaulter.h"

#include "io/prefault.h"

#include <unistd.h>

#include <algorithm>
#include <cstdint>

namespace vecwal::index {
namespace {
constexpr size_t kStep = 2 << 20;  // per madvise: short, so a stop is prompt

std::byte* PageUp(std::byte* p) {
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  return reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(p) + page - 1) / page * page);
}
}  // namespace

PagePrefaulter::PagePrefaulter(std::byte* begin, std::byte* end, size_t lead, unsigned threads)
    : begin_(begin), end_(end), lead_(lead), frontier_(begin), next_(PageUp(begin)) {
  for (unsigned i = 0; i < std::max(threads, 1u); ++i) threads_.emplace_back([this] { Run(); });
}

PagePrefaulter::~PagePrefaulter() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void PagePrefaulter::Advance(std::byte* frontier) {
  {
    std::lock_guard lk(mu_);
    frontier_ = std::clamp(frontier, begin_, end_);
  }
  cv_.notify_all();
}

void PagePrefaulter::Run() {
  std::unique_lock lk(mu_);
  while (!stop_ && next_ < end_) {
    std::byte* target = frontier_ + std::min<size_t>(lead_, static_cast<size_t>(end_ - frontier_));
    if (next_ >= target) {
      cv_.wait(lk);
      continue;
    }
    // Pages the adds reached first are present already: populating them is
    // a cheap no-op.
    std::byte* from = next_;
    const size_t n = std::min<size_t>(kStep, static_cast<size_t>(target - from));
    next_ = std::min(PageUp(from + n), end_);
    const size_t len = static_cast<size_t>(next_ - from);
    lk.unlock();
    const bool ok = PrefaultForWrite(from, len);
    lk.lock();
    if (!ok) {  // unsupported, or out of memory: the adds fault pages in themselves
      stop_ = true;
      cv_.notify_all();
    }
  }
}

}  // namespace vecwal::index
