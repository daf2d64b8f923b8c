// PagePrefaulter: faults in, from threads of its own, the pages just past
// where adds are writing into reserved storage.
//
// Replaying a log into a Flat index writes every vector into pages the
// process has never touched; at 1M x 768-d the kernel's page faults and
// zeroing of fresh pages were a third of replay's CPU, all of it on the
// applying thread. MADV_POPULATE_WRITE runs the same faults here, a bounded
// distance ahead, on whichever core is free. It writes no data, so it cannot
// race with the adds; where the kernel lacks it (before 5.14) the thread
// just ends. On a VM a fault can cost microseconds (the host backs the page
// too): loading a 3 GB checkpoint spent 3-4.5 s of system time in them, more
// than the disk took to read the file, so a load faults with two threads.
//
// The owner must destroy it before the storage goes or moves.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>
#include <vector>

namespace vecwal::index {

class PagePrefaulter {
 public:
  // Storage [begin, end), of which [begin, frontier) is written already;
  // stays at most `lead` bytes ahead of the frontier, with `threads` threads
  // faulting 2 MiB steps side by side.
  PagePrefaulter(std::byte* begin, std::byte* end, size_t lead, unsigned threads = 1);
  ~PagePrefaulter();
  PagePrefaulter(const PagePrefaulter&) = delete;
  PagePrefaulter& operator=(const PagePrefaulter&) = delete;

  // Adds have written up to `frontier`.
  void Advance(std::byte* frontier);

 private:
  void Run();

  std::byte* const begin_;
  std::byte* const end_;
  const size_t lead_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::byte* frontier_;
  std::byte* next_;  // faulted, or claimed by a thread, below this
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace vecwal::index
