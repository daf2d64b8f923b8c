#include "wal/segment_allocator.h"

#include <algorithm>

#include "io/aligned_buffer.h"
#include "wal/format.h"

namespace vecwal::wal {

SegmentAllocator::SegmentAllocator(FileSystem& fs, std::string dir, uint64_t segment_bytes, size_t max_spares)
    : fs_(fs), dir_(std::move(dir)), segment_bytes_(segment_bytes), max_spares_(max_spares) {}

SegmentAllocator::~SegmentAllocator() { Quiesce(); }

void SegmentAllocator::Quiesce() {
  if (worker_.joinable()) worker_.join();
}

std::string SegmentAllocator::PathOf(uint64_t id) const { return dir_ + "/" + SegmentFileName(id); }

void SegmentAllocator::AdoptSpare(const std::string& path) {
  std::lock_guard lk(mu_);
  spares_.push_back(path);
}

void SegmentAllocator::PrepareAsync(uint64_t id) {
  if (worker_.joinable()) worker_.join();
  {
    std::lock_guard lk(mu_);
    if (ready_.count(id)) return;
    preparing_ = id;
  }
  worker_ = std::thread([this, id] {
    auto file = Prepare(id);
    std::lock_guard lk(mu_);
    ready_.emplace(id, std::move(file));
    preparing_ = 0;
    cv_.notify_all();
  });
}

Result<std::unique_ptr<File>> SegmentAllocator::Take(uint64_t id) {
  {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return preparing_ != id; });
    auto it = ready_.find(id);
    if (it != ready_.end()) {
      auto file = std::move(it->second);
      ready_.erase(it);
      return file;
    }
  }
  return Prepare(id);
}

// A spare must be blank: renaming a live segment over another would lose
// its records. Costs one 4 KiB read off the commit path.
Status SegmentAllocator::CheckBlank(const std::string& path) {
  FileOpenOptions ro;
  VECWAL_ASSIGN_OR_RETURN(auto f, fs_.Open(path, ro));
  VECWAL_ASSIGN_OR_RETURN(auto block, ReadRange(*f, 0, kMinBlockSize));
  for (std::byte b : block)
    if (b != std::byte{0})
      return Status::Corruption(path + ": a spare segment whose header block is not blank; refusing to reuse it");
  return Status::OK();
}

Result<std::unique_ptr<File>> SegmentAllocator::Prepare(uint64_t id) {
  const std::string path = PathOf(id);
  std::string spare;
  {
    std::lock_guard lk(mu_);
    // The target itself may be a spare (a blank file adopted at open): take
    // it, so that it cannot be handed out again once it is live.
    auto self = std::find(spares_.begin(), spares_.end(), path);
    if (self != spares_.end()) {
      spare = *self;
      spares_.erase(self);
    } else if (!spares_.empty()) {
      spare = spares_.front();
      spares_.pop_front();
    }
  }
  if (!spare.empty()) VECWAL_RETURN_IF_ERROR(CheckBlank(spare));
  FileOpenOptions rw;
  rw.writable = true;
  if (!spare.empty()) {
    if (spare != path) VECWAL_RETURN_IF_ERROR(fs_.Rename(spare, path));
  } else {
    (void)fs_.Remove(path);  // a leftover of a crash during creation, if any
    FileOpenOptions create = rw;
    create.create = true;
    create.exclusive = true;
    create.zero_fill_bytes = segment_bytes_;
    auto made = fs_.Open(path, create);
    if (!made.ok()) return made.status().WithContext("reserving segment " + std::to_string(id));
  }
  VECWAL_RETURN_IF_ERROR(fs_.SyncDir(dir_));
  return fs_.Open(path, rw);
}

Status SegmentAllocator::Retire(const std::string& path) {
  {
    std::lock_guard lk(mu_);
    if (spares_.size() >= max_spares_) {
      VECWAL_RETURN_IF_ERROR(fs_.Remove(path));
      return Status::OK();  // the caller syncs the directory once for all
    }
  }
  FileOpenOptions rw;
  rw.writable = true;
  VECWAL_ASSIGN_OR_RETURN(auto file, fs_.Open(path, rw));
  AlignedBuffer zeros(kMinBlockSize, 4096);
  VECWAL_RETURN_IF_ERROR(file->WriteAt(0, zeros.span()));
  VECWAL_RETURN_IF_ERROR(file->Sync());
  std::lock_guard lk(mu_);
  spares_.push_back(path);
  return Status::OK();
}

}  // namespace vecwal::wal
