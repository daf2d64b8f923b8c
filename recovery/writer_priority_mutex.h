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

#include <atomic>
#include <mutex>
#include <shared_mutex>

namespace vecwal::recovery {

class WriterPriorityMutex {
 public:
  void lock() {
    Waiting w(waiting_), x(exclusive_waiting_);
    std::lock_guard g(gate_);
    rw_.lock();
  }
  void unlock() { rw_.unlock(); }
  void lock_shared() {
    Waiting w(waiting_);
    { std::lock_guard g(gate_); }
    rw_.lock_shared();
  }
  void unlock_shared() { rw_.unlock_shared(); }

  // Whether a thread is waiting to lock it, either way: a holder that works
  // in steps may take longer ones while nobody is.
  bool has_waiters() const { return waiting_.load(std::memory_order_relaxed) != 0; }
  // Whether a thread is waiting to lock it exclusively: a reader that works
  // in steps holds back only those (and the readers behind them).
  bool has_exclusive_waiters() const { return exclusive_waiting_.load(std::memory_order_relaxed) != 0; }

 private:
  struct Waiting {
    explicit Waiting(std::atomic<int>& n) : n_(n) { n_.fetch_add(1, std::memory_order_relaxed); }
    ~Waiting() { n_.fetch_sub(1, std::memory_order_relaxed); }
    std::atomic<int>& n_;
  };
  std::mutex gate_;
  std::shared_mutex rw_;
  std::atomic<int> waiting_{0};
  std::atomic<int> exclusive_waiting_{0};
};

}  // namespace vecwal::recovery
