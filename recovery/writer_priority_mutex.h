// A reader-writer lock under which a waiting writer stops new readers.
//
// std::shared_mutex on glibc lets readers in while a writer waits, so a few
// threads searching back to back (each search holding the lock for
// milliseconds, overlapping the next) starve applies for as long as they
// keep searching: vecwal-bench mixed measured 16 writers falling from 4k to
// 15 upserts/s beside 2 searchers. Here a writer takes the gate before it
// waits, and readers pass the gate before they share, so a writer waits only
// for the readers already inside.
#pragma once

#include <mutex>
#include <shared_mutex>

namespace vecwal::recovery {

class WriterPriorityMutex {
 public:
  void lock() {
    std::lock_guard g(gate_);
    rw_.lock();
  }
  void unlock() { rw_.unlock(); }
  void lock_shared() {
    { std::lock_guard g(gate_); }
    rw_.lock_shared();
  }
  void unlock_shared() { rw_.unlock_shared(); }

 private:
  std::mutex gate_;
  std::shared_mutex rw_;
};

}  // namespace vecwal::recovery
