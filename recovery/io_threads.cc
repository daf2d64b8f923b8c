#include "recovery/io_threads.h"

namespace vecwal::recovery {

IoThreads::IoThreads(unsigned threads) {
  threads_.reserve(threads);
  for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
}

IoThreads::~IoThreads() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

std::future<Status> IoThreads::Run(std::function<Status()> task) {
  std::packaged_task<Status()> p(std::move(task));
  std::future<Status> f = p.get_future();
  {
    std::lock_guard lk(mu_);
    todo_.push_back(std::move(p));
  }
  cv_.notify_one();
  return f;
}

void IoThreads::Work() {
  std::unique_lock lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || !todo_.empty(); });
    if (todo_.empty()) return;  // stopped, with nothing left to run
    std::packaged_task<Status()> task = std::move(todo_.front());
    todo_.pop_front();
    lk.unlock();
    task();
    lk.lock();
  }
}

}  // namespace vecwal::recovery
