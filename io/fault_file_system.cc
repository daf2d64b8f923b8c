#include "io/fault_file_system.h"

#include <algorithm>
#include <cstring>
#include <deque>

#include "io/aligned_buffer.h"

namespace vecwal {
namespace {

Status ErrnoStatus(int err, const std::string& what) { return Status::FromErrno(err, "injected fault: " + what); }

class FaultFile final : public File {
 public:
  FaultFile(std::unique_ptr<File> base, FaultInjectionFileSystem* fs) : base_(std::move(base)), fs_(fs) {}
  const std::string& path() const override { return base_->path(); }
  bool is_direct() const override { return base_->is_direct(); }
  size_t alignment() const override { return base_->alignment(); }
  Result<size_t> ReadAt(uint64_t off, std::span<std::byte> dst) override {
    VECWAL_RETURN_IF_ERROR(fs_->CheckAlive("read " + path()));
    return base_->ReadAt(off, dst);
  }
  Status WriteAt(uint64_t off, std::span<const std::byte> src) override {
    auto v = fs_->NextWrite();
    std::string what = "write " + path() + " at offset " + std::to_string(off);
    switch (v.kind) {
      case FaultInjectionFileSystem::Verdict::kFail: return ErrnoStatus(v.err, what);
      case FaultInjectionFileSystem::Verdict::kTear:
        if (v.keep_bytes > 0) (void)base_->WriteAt(off, src.first(std::min(v.keep_bytes, src.size())));
        return ErrnoStatus(EIO, what + " (crash)");
      case FaultInjectionFileSystem::Verdict::kFailSync:
        sync_poisoned_ = true;
        return base_->WriteAt(off, src);
      case FaultInjectionFileSystem::Verdict::kPass:
        if (fs_->FlipsWritesTo(path()) && !src.empty()) {
          // A copy: the caller's bytes stay as given. Aligned for O_DIRECT.
          AlignedBuffer lied(src.size(), std::max<size_t>(base_->alignment(), 64), AlignedBuffer::kUninitialized);
          std::memcpy(lied.data(), src.data(), src.size());
          lied.data()[src.size() / 2] ^= std::byte{0x10};
          return base_->WriteAt(off, lied.span().first(src.size()));
        }
        return base_->WriteAt(off, src);
    }
    return Status::OK();
  }
  Status Sync() override {
    VECWAL_RETURN_IF_ERROR(fs_->CheckAlive("fdatasync " + path()));
    if (sync_poisoned_) return ErrnoStatus(EIO, "fdatasync " + path());
    return base_->Sync();
  }
  Result<uint64_t> Size() override { return base_->Size(); }
  File& base() { return *base_; }

 private:
  std::unique_ptr<File> base_;
  FaultInjectionFileSystem* fs_;
  bool sync_poisoned_ = false;
};

class FaultWriteQueue final : public DurableWriteQueue {
 public:
  FaultWriteQueue(std::unique_ptr<DurableWriteQueue> base, FaultInjectionFileSystem* fs)
      : base_(std::move(base)), fs_(fs) {}
  unsigned depth() const override { return base_->depth(); }
  std::string name() const override { return "fault injection over " + base_->name(); }

  Status Submit(const WriteRequest& req) override {
    auto& ff = dynamic_cast<FaultFile&>(*req.file);
    auto v = fs_->NextWrite();
    std::string what = "write " + ff.path() + " at offset " + std::to_string(req.offset);
    WriteRequest inner = req;
    inner.file = &ff.base();
    switch (v.kind) {
      case FaultInjectionFileSystem::Verdict::kPass: return base_->Submit(inner);
      case FaultInjectionFileSystem::Verdict::kFail:
        synthetic_.push_back({req.tag, ErrnoStatus(v.err, what)});
        return Status::OK();
      case FaultInjectionFileSystem::Verdict::kTear: {
        size_t keep = std::min(v.keep_bytes, req.data.size());
        if (keep > 0) (void)ff.base().WriteAt(req.offset, req.data.first(keep));
        synthetic_.push_back({req.tag, ErrnoStatus(EIO, what + " (crash)")});
        return Status::OK();
      }
      case FaultInjectionFileSystem::Verdict::kFailSync:
        sync_fail_tags_.push_back({req.tag, v.err});
        return base_->Submit(inner);
    }
    return Status::OK();
  }

  Status Wait(std::vector<WriteCompletion>& out, bool block) override {
    size_t first = out.size();
    if (!synthetic_.empty()) {
      for (auto& c : synthetic_) out.push_back(std::move(c));
      synthetic_.clear();
      block = false;
    }
    VECWAL_RETURN_IF_ERROR(base_->Wait(out, block));
    for (size_t i = first; i < out.size(); ++i) {
      for (auto it = sync_fail_tags_.begin(); it != sync_fail_tags_.end(); ++it) {
        if (it->first != out[i].tag) continue;
        if (out[i].status.ok()) out[i].status = ErrnoStatus(it->second, "fdatasync after write");
        sync_fail_tags_.erase(it);
        break;
      }
      if (fs_->crashed() && out[i].status.ok()) out[i].status = ErrnoStatus(EIO, "write after crash");
    }
    return Status::OK();
  }

  void Wake() override { base_->Wake(); }

 private:
  std::unique_ptr<DurableWriteQueue> base_;
  FaultInjectionFileSystem* fs_;
  std::vector<WriteCompletion> synthetic_;
  std::deque<std::pair<uint64_t, int>> sync_fail_tags_;  // tag, errno
};

}  // namespace

void FaultInjectionFileSystem::FailWritesFrom(uint64_t n, int err) {
  std::lock_guard lk(mu_);
  fail_from_ = writes_ + n;
  fail_err_ = err;
}

void FaultInjectionFileSystem::FailSyncsFrom(uint64_t n, int err) {
  std::lock_guard lk(mu_);
  sync_fail_from_ = writes_ + n;
  sync_err_ = err;
}

void FaultInjectionFileSystem::CrashAtWrite(uint64_t n, size_t keep_bytes) {
  std::lock_guard lk(mu_);
  crash_at_ = writes_ + n;
  crash_keep_ = AlignDown(keep_bytes, 512);
}

void FaultInjectionFileSystem::FailOpensOf(const std::string& part, int err) {
  std::lock_guard lk(mu_);
  fail_open_part_ = part;
  fail_open_err_ = err;
}

void FaultInjectionFileSystem::HoldOpensOf(const std::string& part) {
  std::lock_guard lk(mu_);
  hold_open_part_ = part;
}

void FaultInjectionFileSystem::FlipBitInWritesTo(const std::string& part) {
  std::lock_guard lk(mu_);
  flip_part_ = part;
}

bool FaultInjectionFileSystem::FlipsWritesTo(const std::string& path) {
  std::lock_guard lk(mu_);
  return !flip_part_.empty() && path.find(flip_part_) != std::string::npos;
}

void FaultInjectionFileSystem::ReleaseOpens() {
  {
    std::lock_guard lk(mu_);
    hold_open_part_.clear();
  }
  released_.notify_all();
}

void FaultInjectionFileSystem::ClearFaults() {
  {
    std::lock_guard lk(mu_);
    fail_from_ = sync_fail_from_ = crash_at_ = kNever;
    fail_open_part_.clear();
    hold_open_part_.clear();
    flip_part_.clear();
    fail_reserve_ = false;
    crashed_ = false;
  }
  released_.notify_all();
}

FaultInjectionFileSystem::Verdict FaultInjectionFileSystem::NextWrite() {
  std::lock_guard lk(mu_);
  uint64_t n = writes_++;
  if (crashed_) return {Verdict::kFail, EIO, 0};
  if (n == crash_at_) {
    crashed_ = true;
    return {Verdict::kTear, EIO, crash_keep_};
  }
  if (n >= fail_from_) return {Verdict::kFail, fail_err_, 0};
  if (n >= sync_fail_from_) return {Verdict::kFailSync, sync_err_, 0};
  return {};
}

Status FaultInjectionFileSystem::CheckAlive(const std::string& what) const {
  if (crashed_) return ErrnoStatus(EIO, what + " after crash");
  return Status::OK();
}

Result<std::unique_ptr<File>> FaultInjectionFileSystem::Open(const std::string& path, const FileOpenOptions& o) {
  VECWAL_RETURN_IF_ERROR(CheckAlive("open " + path));
  if (o.create && o.zero_fill_bytes > 0 && fail_reserve_)
    return ErrnoStatus(ENOSPC, "reserve " + std::to_string(o.zero_fill_bytes) + " bytes for " + path);
  {
    std::unique_lock lk(mu_);
    auto held = [&] { return !hold_open_part_.empty() && path.find(hold_open_part_) != std::string::npos; };
    if (held()) {
      ++opens_held_;
      released_.wait(lk, [&] { return !held(); });
      --opens_held_;
    }
    if (!fail_open_part_.empty() && path.find(fail_open_part_) != std::string::npos)
      return ErrnoStatus(fail_open_err_, "open " + path);
  }
  VECWAL_ASSIGN_OR_RETURN(auto f, base_->Open(path, o));
  return std::unique_ptr<File>(std::make_unique<FaultFile>(std::move(f), this));
}

Result<std::unique_ptr<DurableWriteQueue>> FaultInjectionFileSystem::NewWriteQueue(unsigned depth,
                                                                                   DurableWriteMode mode) {
  VECWAL_ASSIGN_OR_RETURN(auto q, base_->NewWriteQueue(depth, mode));
  return std::unique_ptr<DurableWriteQueue>(std::make_unique<FaultWriteQueue>(std::move(q), this));
}

Status FaultInjectionFileSystem::CreateDir(const std::string& dir) {
  VECWAL_RETURN_IF_ERROR(CheckAlive("create directory " + dir));
  return base_->CreateDir(dir);
}
Status FaultInjectionFileSystem::SyncDir(const std::string& dir) {
  VECWAL_RETURN_IF_ERROR(CheckAlive("fsync directory " + dir));
  return base_->SyncDir(dir);
}
Status FaultInjectionFileSystem::Rename(const std::string& from, const std::string& to) {
  VECWAL_RETURN_IF_ERROR(CheckAlive("rename " + from));
  return base_->Rename(from, to);
}
Status FaultInjectionFileSystem::Remove(const std::string& path) {
  VECWAL_RETURN_IF_ERROR(CheckAlive("remove " + path));
  return base_->Remove(path);
}
Status FaultInjectionFileSystem::Truncate(const std::string& path, uint64_t size) {
  VECWAL_RETURN_IF_ERROR(CheckAlive("truncate " + path));
  return base_->Truncate(path, size);
}

}  // namespace vecwal
