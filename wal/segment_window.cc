#include "wal/segment_window.h"

#include <algorithm>
#include <cstring>
#include <mutex>

namespace vecwal::wal {
namespace {
// Reads are issued in whole device blocks: an O_DIRECT file refuses others.
constexpr uint64_t kReadAlign = 4096;
}  // namespace

// Buffers of `size` bytes (or more, for a long record read whole), each
// handed out as a shared pointer that returns it here when its last holder
// lets go. Reused, not freed: an 8 MiB buffer freed and allocated again is
// fresh memory, and on a VM faulting that in costs more than reading it.
class SegmentWindow::BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  explicit BufferPool(size_t size) : size_(size) {}

  Buffer Get(size_t min_size) {
    AlignedBuffer b;
    {
      std::lock_guard lk(mu_);
      if (!free_.empty()) {
        b = std::move(free_.back());
        free_.pop_back();
      }
    }
    if (b.size() < min_size) b = AlignedBuffer(std::max(min_size, size_), kReadAlign, AlignedBuffer::kUninitialized);
    return Buffer(new AlignedBuffer(std::move(b)), [pool = shared_from_this()](AlignedBuffer* p) { pool->Put(p); });
  }

 private:
  void Put(AlignedBuffer* p) {
    if (p->size() == size_) {  // one grown for a long record is not kept
      std::lock_guard lk(mu_);
      free_.push_back(std::move(*p));
    }
    delete p;
  }

  const size_t size_;
  std::mutex mu_;
  std::vector<AlignedBuffer> free_;
};

SegmentWindow::SegmentWindow(FileSystem& fs, size_t chunk, size_t carry, size_t depth)
    : fs_(fs), chunk_(chunk), carry_(carry), depth_(depth), pool_(std::make_shared<BufferPool>(carry + chunk)) {}

Status SegmentWindow::ReadChunk(File& f, const std::string& path, uint64_t file_bytes, uint64_t offset,
                                std::span<std::byte> dst, size_t need, uint64_t* read) {
  VECWAL_ASSIGN_OR_RETURN(size_t got, f.ReadAt(offset, dst));
  *read += got;
  if (got < need)
    return Status::Corruption(path + ": file ended at offset " + std::to_string(offset + got) + ", header says " +
                              std::to_string(file_bytes) + " bytes");
  return Status::OK();
}

Status SegmentWindow::Begin(const SegmentFileInfo& seg, const SegmentFileInfo* then) {
  seg_ = &seg;
  then_ = then;
  file_.reset();
  win_start_ = win_len_ = 0;
  if (ahead_.empty() || ahead_.front().seg != &seg || ahead_.front().offset != 0) {
    DropAhead();  // read ahead for a segment the scan skipped, if any
    return Status::OK();
  }
  VECWAL_RETURN_IF_ERROR(JoinFront());
  Ahead& a = ahead_.front();
  // Later chunks of this segment read through the file the first one opened.
  file_ = std::move(a.file);
  win_buf_ = std::move(a.buf);
  win_off_ = carry_;
  win_len_ = a.len;
  ahead_.pop_front();
  StartAhead();
  return Status::OK();
}

void SegmentWindow::End() {
  DropAhead();
  file_.reset();
  seg_ = then_ = nullptr;
}

Result<const std::byte*> SegmentWindow::At(uint64_t pos, size_t len) {
  if (pos < win_start_ || pos + len > win_start_ + win_len_) VECWAL_RETURN_IF_ERROR(Slide(pos, len));
  return win_buf_->data() + win_off_ + (pos - win_start_);
}

Status SegmentWindow::Slide(uint64_t pos, size_t len) {
  const uint64_t start = AlignDown(pos, kReadAlign);
  const uint64_t need_end = pos + len;
  const uint64_t win_end = win_start_ + win_len_;
  const bool continues = !ahead_.empty() && ahead_.front().seg == seg_ && ahead_.front().offset == win_end &&
                         win_len_ > 0 && start >= win_start_ && start <= win_end && win_end - start <= carry_ &&
                         need_end <= win_end + ahead_.front().len;
  if (continues) {
    VECWAL_RETURN_IF_ERROR(JoinFront());
    Ahead& a = ahead_.front();
    // The straddling record's head goes in front of the chunk read ahead.
    const size_t carry = static_cast<size_t>(win_end - start);
    std::memcpy(a.buf->data() + carry_ - carry, win_buf_->data() + win_off_ + (start - win_start_), carry);
    win_buf_ = std::move(a.buf);  // the old one goes back to the pool, unless kept
    win_off_ = carry_ - carry;
    win_start_ = start;
    win_len_ = carry + a.len;
    ahead_.pop_front();
  } else {
    // A step back, or a record longer than the carry: start over here.
    DropAhead();
    // Ends on a block, so that the read ahead after it starts on one.
    const uint64_t end =
        std::min<uint64_t>(seg_->file_bytes, AlignUp(std::max<uint64_t>(need_end, start + chunk_), kReadAlign));
    VECWAL_RETURN_IF_ERROR(ReadInto(start, end));
  }
  StartAhead();
  return Status::OK();
}

Status SegmentWindow::OpenCurrent() {
  if (file_) return Status::OK();
  FileOpenOptions ro;
  VECWAL_ASSIGN_OR_RETURN(file_, fs_.Open(seg_->path, ro));
  return Status::OK();
}

Status SegmentWindow::ReadInto(uint64_t start, uint64_t end) {
  const size_t len = static_cast<size_t>(end - start);
  const size_t req = static_cast<size_t>(AlignUp(len, kReadAlign));
  // Never into the buffer in hand: someone may keep it.
  win_buf_.reset();
  win_buf_ = pool_->Get(std::max(req, carry_ + chunk_));
  VECWAL_RETURN_IF_ERROR(OpenCurrent());
  win_off_ = 0;
  win_start_ = start;
  win_len_ = 0;  // until the read succeeds
  VECWAL_RETURN_IF_ERROR(ReadChunk(*file_, seg_->path, seg_->file_bytes, start, {win_buf_->data(), req}, len,
                                   &bytes_read_));
  win_len_ = len;
  return Status::OK();
}

void SegmentWindow::StartAhead() {
  while (ahead_.size() < depth_) {
    // The chunk after the last one asked for: in its segment, or the first
    // of the segment the scan visits next.
    const SegmentFileInfo* s = seg_;
    uint64_t off = win_start_ + win_len_;
    if (!ahead_.empty()) {
      s = ahead_.back().seg;
      off = ahead_.back().offset + ahead_.back().len;
    }
    if (off >= s->file_bytes) {
      if (s != seg_ || then_ == nullptr) return;
      s = then_;
      off = 0;
    }
    const size_t len = static_cast<size_t>(std::min<uint64_t>(chunk_, s->file_bytes - off));
    if (len == 0) return;
    File* shared = nullptr;
    if (s == seg_) {
      if (!OpenCurrent().ok()) return;  // the synchronous path will say why
      shared = file_.get();
    }
    Ahead& a = ahead_.emplace_back();
    a.seg = s;
    a.offset = off;
    a.len = len;
    a.buf = pool_->Get(carry_ + chunk_);
    const std::span<std::byte> dst{a.buf->data() + carry_, static_cast<size_t>(AlignUp(len, kReadAlign))};
    // The task copies what it needs of the segment: the list it came from
    // may go before the task is joined (End joins it first).
    a.done = std::async(std::launch::async,
                        [this, &a, shared, dst, off, len, path = s->path, bytes = s->file_bytes]() -> Status {
                          File* file = shared;
                          if (file == nullptr) {
                            FileOpenOptions ro;
                            VECWAL_ASSIGN_OR_RETURN(a.file, fs_.Open(path, ro));
                            file = a.file.get();
                          }
                          return ReadChunk(*file, path, bytes, off, dst, len, &a.read);
                        });
  }
}

Status SegmentWindow::JoinFront() {
  Ahead& a = ahead_.front();
  Status s = a.done.get();
  bytes_read_ += a.read;
  if (!s.ok()) ahead_.pop_front();  // the scan ends with this error; nothing may join it again
  return s;
}

void SegmentWindow::DropAhead() {
  for (auto& a : ahead_) {
    if (a.done.valid()) {
      (void)a.done.get();
      bytes_read_ += a.read;
    }
  }
  ahead_.clear();
}

}  // namespace vecwal::wal
