// DurableWriteQueue on io_uring.
//
// Each request is one IORING_OP_WRITE with RWF_DSYNC, or a write linked to an
// fdatasync (IOSQE_IO_LINK; the link never spans a submit because both SQEs
// are queued together). Short writes are resubmitted for their remainder; a
// short write breaks the link, so its fdatasync comes back -ECANCELED and is
// reissued with the remainder. An eventfd read kept armed in the ring lets
// Wake() end a blocked wait from any thread.
#include <liburing.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <mutex>

#include "io/posix_file.h"

namespace vecwal::io_internal {
namespace {

constexpr uint64_t kWakeTag = ~0ull;

struct Slot {
  bool busy = false;
  uint64_t tag = 0;
  PosixFile* file = nullptr;
  uint64_t offset = 0;
  std::span<const std::byte> data;
  size_t written = 0;
  int ops_outstanding = 0;
  Status status;
};

class UringWriteQueue final : public DurableWriteQueue {
 public:
  UringWriteQueue(unsigned depth, DurableWriteMode mode) : depth_(depth), mode_(mode), slots_(depth) {}

  // The ring is made on the owner thread's first call: IORING_SETUP_SINGLE_ISSUER
  // binds it to the thread that creates it.
  Status EnsureRing() {
    if (ring_ok_) return Status::OK();
    // Twice the depth: a request may need two SQEs, plus the wake read.
    unsigned entries = 2 * depth_ + 2;
    int rc = io_uring_queue_init(entries, &ring_, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
    if (rc == -EINVAL) rc = io_uring_queue_init(entries, &ring_, 0);  // kernels before 6.1
    if (rc < 0) return Status::FromErrno(-rc, "io_uring_queue_init");
    ring_ok_ = true;
    return Status::OK();
  }

  Status Init() {
    event_fd_ = UniqueFd(::eventfd(0, EFD_CLOEXEC));
    if (!event_fd_.valid()) return Status::FromErrno(errno, "eventfd");
    return Status::OK();
  }

  ~UringWriteQueue() override {
    if (!ring_ok_) return;
    // Requests still in the kernel reference caller memory: reap them first.
    std::vector<WriteCompletion> sink;
    while (Outstanding() > 0) {
      if (!Wait(sink, true).ok()) break;
    }
    io_uring_queue_exit(&ring_);
  }

  unsigned depth() const override { return depth_; }
  std::string name() const override { return std::string("io_uring, ") + ToString(mode_); }

  Status Submit(const WriteRequest& req) override {
    Slot* s = nullptr;
    for (auto& slot : slots_)
      if (!slot.busy) { s = &slot; break; }
    if (s == nullptr) return Status::InvalidArgument("io_uring queue: more than depth requests outstanding");
    VECWAL_RETURN_IF_ERROR(EnsureRing());
    *s = Slot{true, req.tag, &AsPosix(*req.file), req.offset, req.data, 0, 0, Status::OK()};
    return Issue(*s);
  }

  Status Wait(std::vector<WriteCompletion>& out, bool block) override {
    VECWAL_RETURN_IF_ERROR(EnsureRing());
    if (!wake_armed_) {
      io_uring_sqe* sqe = GetSqe();
      if (sqe == nullptr) return Status::IOError("io_uring: no SQE for the wake read");
      io_uring_prep_read(sqe, event_fd_.get(), &wake_value_, sizeof(wake_value_), 0);
      io_uring_sqe_set_data64(sqe, kWakeTag);
      wake_armed_ = true;
    }
    int rc = io_uring_submit_and_wait(&ring_, block ? 1 : 0);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) return Status::FromErrno(-rc, "io_uring_submit_and_wait");
    unsigned head, seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++seen;
      uint64_t data = io_uring_cqe_get_data64(cqe);
      if (data == kWakeTag) {
        wake_armed_ = false;
        continue;
      }
      OnCqe(reinterpret_cast<Slot*>(data & ~1ull), (data & 1) != 0, cqe->res, out);
    }
    io_uring_cq_advance(&ring_, seen);
    return Status::OK();
  }

  void Wake() override {
    uint64_t one = 1;
    ssize_t n = ::write(event_fd_.get(), &one, sizeof(one));
    (void)n;  // an eventfd write fails only on counter overflow, which still wakes
  }

 private:
  size_t Outstanding() const {
    size_t n = 0;
    for (const auto& s : slots_) n += s.busy;
    return n;
  }

  io_uring_sqe* GetSqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {  // SQ full: push what is queued to the kernel, then retry
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    return sqe;
  }

  Status Issue(Slot& s) {
    bool fsync = mode_ == DurableWriteMode::kWriteThenFdatasync;
    if (io_uring_sq_space_left(&ring_) < 2u) io_uring_submit(&ring_);
    io_uring_sqe* w = GetSqe();
    if (w == nullptr) return Status::IOError("io_uring: submission queue full");
    const std::byte* p = s.data.data() + s.written;
    io_uring_prep_write(w, s.file->fd(), p, static_cast<unsigned>(s.data.size() - s.written), s.offset + s.written);
    if (!fsync) w->rw_flags = RWF_DSYNC;
    io_uring_sqe_set_data64(w, reinterpret_cast<uint64_t>(&s));
    ++s.ops_outstanding;
    if (fsync) {
      w->flags |= IOSQE_IO_LINK;
      io_uring_sqe* f = GetSqe();
      if (f == nullptr) return Status::IOError("io_uring: submission queue full");
      io_uring_prep_fsync(f, s.file->fd(), IORING_FSYNC_DATASYNC);
      io_uring_sqe_set_data64(f, reinterpret_cast<uint64_t>(&s) | 1);
      ++s.ops_outstanding;
    }
    return Status::OK();
  }

  void OnCqe(Slot* s, bool is_fsync, int res, std::vector<WriteCompletion>& out) {
    --s->ops_outstanding;
    const std::string& path = s->file->path();
    if (is_fsync) {
      bool canceled_by_short_write = res == -ECANCELED && s->written < s->data.size();
      if (res < 0 && !canceled_by_short_write && s->status.ok())
        s->status = Status::FromErrno(-res, path + ": fdatasync after write at offset " + std::to_string(s->offset));
    } else if (res < 0) {
      if (s->status.ok())
        s->status = Status::FromErrno(-res, path + ": write of " + std::to_string(s->data.size()) +
                                                " bytes at offset " + std::to_string(s->offset + s->written));
    } else if (res == 0) {
      if (s->status.ok())
        s->status = Status::IOError(path + ": write returned 0 at offset " + std::to_string(s->offset + s->written));
    } else {
      s->written += static_cast<size_t>(res);
    }
    if (s->ops_outstanding > 0) return;
    if (s->status.ok() && s->written < s->data.size()) {
      Status st = Issue(*s);  // resume the short write
      if (st.ok()) return;
      s->status = st;
    }
    out.push_back({s->tag, std::move(s->status)});
    s->busy = false;
  }

  unsigned depth_;
  DurableWriteMode mode_;
  std::vector<Slot> slots_;
  io_uring ring_{};
  bool ring_ok_ = false;
  UniqueFd event_fd_;
  uint64_t wake_value_ = 0;
  bool wake_armed_ = false;
};

}  // namespace

Status ProbeUring() {
  static const Status probed = [] {
    io_uring ring;
    int rc = io_uring_queue_init(4, &ring, 0);
    if (rc < 0) return Status::FromErrno(-rc, "io_uring_queue_init");
    io_uring_probe* p = io_uring_get_probe_ring(&ring);
    Status s;
    if (p == nullptr) {
      s = Status::NotSupported("io_uring opcode probe refused");
    } else {
      for (int op : {IORING_OP_WRITE, IORING_OP_READ, IORING_OP_FSYNC})
        if (!io_uring_opcode_supported(p, op)) s = Status::NotSupported("io_uring lacks opcode " + std::to_string(op));
      io_uring_free_probe(p);
    }
    io_uring_queue_exit(&ring);
    return s;
  }();
  return probed;
}

Result<std::unique_ptr<DurableWriteQueue>> NewUringWriteQueue(unsigned depth, DurableWriteMode mode) {
  VECWAL_RETURN_IF_ERROR(ProbeUring());
  auto q = std::make_unique<UringWriteQueue>(depth, mode);
  VECWAL_RETURN_IF_ERROR(q->Init());
  return std::unique_ptr<DurableWriteQueue>(std::move(q));
}

}  // namespace vecwal::io_internal
