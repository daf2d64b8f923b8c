// DurableWriteQueue for kernels or sandboxes that refuse io_uring: `depth`
// threads each run pwritev2(RWF_DSYNC), or pwrite + fdatasync, so the same
// number of writes is in flight as with io_uring.
#include <sys/uio.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "io/posix_file.h"

namespace vecwal::io_internal {
namespace {

class PortableWriteQueue final : public DurableWriteQueue {
 public:
  PortableWriteQueue(unsigned depth, DurableWriteMode mode) : depth_(depth), mode_(mode) {
    for (unsigned i = 0; i < depth; ++i) workers_.emplace_back([this] { Work(); });
  }
  ~PortableWriteQueue() override {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  unsigned depth() const override { return depth_; }
  std::string name() const override { return std::string("portable threads, ") + ToString(mode_); }

  Status Submit(const WriteRequest& req) override {
    std::lock_guard lk(mu_);
    todo_.push_back(req);
    work_cv_.notify_one();
    return Status::OK();
  }

  Status Wait(std::vector<WriteCompletion>& out, bool block) override {
    std::unique_lock lk(mu_);
    if (block) done_cv_.wait(lk, [&] { return !done_.empty() || woken_; });
    woken_ = false;
    for (auto& c : done_) out.push_back(std::move(c));
    done_.clear();
    return Status::OK();
  }

  void Wake() override {
    std::lock_guard lk(mu_);
    woken_ = true;
    done_cv_.notify_one();
  }

 private:
  void Work() {
    std::unique_lock lk(mu_);
    for (;;) {
      work_cv_.wait(lk, [&] { return stop_ || !todo_.empty(); });
      if (todo_.empty()) return;  // stop_ with nothing left
      WriteRequest req = todo_.front();
      todo_.pop_front();
      lk.unlock();
      Status s = Write(req);
      lk.lock();
      done_.push_back({req.tag, std::move(s)});
      done_cv_.notify_one();
    }
  }

  Status Write(const WriteRequest& req) {
    PosixFile& f = AsPosix(*req.file);
    if (mode_ == DurableWriteMode::kWriteThenFdatasync) {
      VECWAL_RETURN_IF_ERROR(f.WriteAt(req.offset, req.data));
      return f.Sync();
    }
    size_t done = 0;
    while (done < req.data.size()) {
      iovec iov{const_cast<std::byte*>(req.data.data() + done), req.data.size() - done};
      ssize_t n = ::pwritev2(f.fd(), &iov, 1, static_cast<off_t>(req.offset + done), RWF_DSYNC);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0)
        return Status::FromErrno(errno, f.path() + ": write at offset " + std::to_string(req.offset + done));
      if (n == 0) return Status::IOError(f.path() + ": write returned 0 at offset " + std::to_string(req.offset + done));
      done += static_cast<size_t>(n);
    }
    return Status::OK();
  }

  unsigned depth_;
  DurableWriteMode mode_;
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  std::deque<WriteRequest> todo_;
  std::vector<WriteCompletion> done_;
  bool woken_ = false;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace

std::unique_ptr<DurableWriteQueue> NewPortableWriteQueue(unsigned depth, DurableWriteMode mode) {
  return std::make_unique<PortableWriteQueue>(depth, mode);
}

}  // namespace vecwal::io_internal
