// Simulated power loss: every disk a power cut could leave.
//
// A process crash (SIGKILL) keeps everything the kernel accepted; a power
// cut keeps only what was made durable, and of the rest any subset, in any
// order, torn at sector granularity. PowerLossRecorder wraps a real
// FileSystem, passes every call through, and records each operation that
// changes the disk, in the order it saw them, with what it made durable:
//  - a write is volatile until a Sync of its file, or until its own durable
//    completion through a DurableWriteQueue (RWF_DSYNC, or a linked
//    fdatasync: only that write is counted as durable then);
//  - creating, renaming or removing a name is volatile until a SyncDir of
//    its directory; a file created with zero_fill_bytes holds durable zeros.
// CrashImage then builds, for any prefix of those operations (a crash point)
// and a way the cut went (a CrashVariant), the directory tree the machine
// would find after rebooting.
//
// Thread safety: the recorder may be used from many threads (the log's
// submission thread and the writers); ops() copies under its lock.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "io/file_system.h"

namespace vecwal {

struct DiskOp {
  enum Kind { kCreate, kWrite, kDurable, kSync, kSyncDir, kRename, kRemove, kTruncate } kind;
  std::string path, to;             // to: kRename's new name
  uint64_t offset = 0;              // kWrite; kTruncate's size
  std::vector<std::byte> data;      // kWrite
  uint64_t zeros = 0;               // kCreate: durable zero bytes it holds
  uint64_t write_id = 0;            // kWrite, and the kDurable that completes it
};

class PowerLossRecorder final : public FileSystem {
 public:
  explicit PowerLossRecorder(std::shared_ptr<FileSystem> base) : base_(std::move(base)) {}

  // Operations so far; a crash point n means "the first n happened".
  std::vector<DiskOp> ops() const;
  uint64_t op_count() const;

  // Called by the wrappers.
  uint64_t Record(DiskOp op);  // returns the op's write_id for kWrite

  // FileSystem
  Result<std::unique_ptr<File>> Open(const std::string& path, const FileOpenOptions& opts) override;
  Result<std::unique_ptr<DurableWriteQueue>> NewWriteQueue(unsigned depth, DurableWriteMode mode) override;
  Result<std::vector<std::string>> ListDir(const std::string& dir) override { return base_->ListDir(dir); }
  Status CreateDir(const std::string& dir) override { return base_->CreateDir(dir); }
  Status SyncDir(const std::string& dir) override;
  Status Rename(const std::string& from, const std::string& to) override;
  Status Remove(const std::string& path) override;
  Status Truncate(const std::string& path, uint64_t size) override;
  Result<std::unique_ptr<DirectoryLock>> LockDir(const std::string& dir, int wait_ms) override {
    return base_->LockDir(dir, wait_ms);
  }
  std::string backend_name() const override { return "power-loss recorder over " + base_->backend_name(); }

 private:
  std::shared_ptr<FileSystem> base_;
  mutable std::mutex mu_;
  std::vector<DiskOp> ops_;
  uint64_t next_write_id_ = 1;
};

// How the power cut treated what was not durable yet.
enum class CrashVariant {
  kDropVolatile,  // every volatile write and name change lost
  kKeepVolatile,  // every one of them reached the disk
  kTornLast,      // all reached it but the newest volatile write, which keeps a random subset of its sectors
  kRandomSubset,  // each volatile write independently kept, dropped or torn; each directory's
                  // volatile name changes kept or lost as a whole
};
const char* ToString(CrashVariant v);
inline constexpr CrashVariant kAllCrashVariants[] = {CrashVariant::kDropVolatile, CrashVariant::kKeepVolatile,
                                                     CrashVariant::kTornLast, CrashVariant::kRandomSubset};

// Writes into `out_root` the files that would exist after a power cut once
// the first `n` of `ops` had happened. Recorded paths must lie under
// `recorded_root`; they are placed at the same relative path under out_root.
Status BuildCrashImage(const std::vector<DiskOp>& ops, size_t n, CrashVariant variant, std::mt19937_64& rng,
                       const std::string& recorded_root, const std::string& out_root);

}  // namespace vecwal
