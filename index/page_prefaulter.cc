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

PagePrefaulter::PagePrefaulter(std::byte* begin, std::byte* end, size_t lead)
    : begin_(begin), end_(end), lead_(lead), frontier_(begin), thread_([this] { Run(); }) {}

PagePrefaulter::~PagePrefaulter() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_one();
  thread_.join();
}

void PagePrefaulter::Advance(std::byte* frontier) {
  {
    std::lock_guard lk(mu_);
    frontier_ = std::clamp(frontier, begin_, end_);
  }
  cv_.notify_one();
}

void PagePrefaulter::Run() {
  std::byte* done = PageUp(begin_);
  std::unique_lock lk(mu_);
  while (!stop_ && done < end_) {
    std::byte* target = frontier_ + std::min<size_t>(lead_, static_cast<size_t>(end_ - frontier_));
    if (done >= target) {
      cv_.wait(lk);
      continue;
    }
    // Pages the adds reached first are present already: populating them is
    // a cheap no-op.
    const size_t n = std::min<size_t>(kStep, static_cast<size_t>(target - done));
    lk.unlock();
    const size_t len = static_cast<size_t>(std::min(PageUp(done + n), end_) - done);
    const bool ok = PrefaultForWrite(done, len);
    lk.lock();
    if (!ok) return;  // unsupported, or out of memory: the adds fault pages in themselves
    done += len;
    if (len == 0) break;
  }
}

}  // namespace vecwal::index
