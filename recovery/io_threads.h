// IoThreads: a few threads, kept for as long as a checkpoint is written or
// loaded, that run its blocking reads and writes so that several are in
// flight while the caller copies and checksums.
//
// The checkpoint writer started a thread (std::async) for each 1 MiB stage:
// about 3000 thread creations and exits per 3 GB checkpoint, 0.1-0.15 s of
// system time on this project's 2-core VM, and each new thread was another
// wake-up across cores. Here the threads are made once and fed a queue.
//
// Futures complete in any order; a caller that reuses buffers waits for them
// oldest first. The destructor runs what is queued and joins the threads, so
// an owner destroys it before the buffers its tasks use.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "io/status.h"

namespace vecwal::recovery {

class IoThreads {
 public:
  explicit IoThreads(unsigned threads);
  ~IoThreads();
  IoThreads(const IoThreads&) = delete;
  IoThreads& operator=(const IoThreads&) = delete;

  // Runs `task` on one of the threads; its status arrives in the future.
  std::future<Status> Run(std::function<Status()> task);

 private:
  void Work();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<Status()>> todo_;
  bool stop_ = false;
  std::vector<std::thread> threads_;  // last: joined before the queue goes
};

}  // namespace vecwal::recovery
