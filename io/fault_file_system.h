// FaultInjectionFileSystem: the seam where tests break the disk.
//
// Wraps a real FileSystem and, on command, makes the Nth write fail (EIO,
// ENOSPC), makes syncs fail after the data reached the file (the "fsyncgate"
// case: bytes may be on disk although the caller was told they are not),
// refuses to create reserved files (ENOSPC), or simulates a crash: the Nth
// write is torn at 512-byte sector granularity, and from then on every I/O
// fails, as if the machine had stopped. Writes are counted through both
// DurableWriteQueue::Submit and File::WriteAt.
//
// Thread safety: all methods may be called from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "io/file_system.h"

namespace vecwal {

class FaultInjectionFileSystem final : public FileSystem {
 public:
  static constexpr uint64_t kNever = ~0ull;

  explicit FaultInjectionFileSystem(std::shared_ptr<FileSystem> base) : base_(std::move(base)) {}

  // Writes numbered >= n (0-based, counted from now on) fail with `err`
  // without touching the file.
  void FailWritesFrom(uint64_t n, int err);
  // Writes numbered >= n reach the file, but their sync fails with `err`.
  void FailSyncsFrom(uint64_t n, int err = EIO);
  // Creating a file with zero_fill_bytes fails with ENOSPC.
  void FailReservations(bool on) { fail_reserve_ = on; }
  // Opening a path that contains `part` fails with `err`: one kind of file
  // (".vwc": checkpoints) fails while the others (the log) work.
  void FailOpensOf(const std::string& part, int err);
  // Opening a path that contains `part` waits until ReleaseOpens() (or
  // ClearFaults()): a checkpoint that takes as long as a test needs.
  void HoldOpensOf(const std::string& part);
  void ReleaseOpens();
  // Opens waiting in HoldOpensOf now.
  unsigned opens_held() const { return opens_held_; }
  // Write number n keeps only its first `keep_bytes` (rounded down to 512)
  // and every I/O after it fails with EIO: a power cut during that write.
  void CrashAtWrite(uint64_t n, size_t keep_bytes);
  // Every File::WriteAt to a path that contains `part` reaches the file with
  // one bit flipped (in its middle byte) and reports success: a disk that
  // stores other bytes than it was given, which only a read-back can catch.
  void FlipBitInWritesTo(const std::string& part);
  void ClearFaults();

  bool crashed() const { return crashed_; }
  uint64_t writes_seen() const { return writes_; }

  // FileSystem
  Result<std::unique_ptr<File>> Open(const std::string& path, const FileOpenOptions& opts) override;
  Result<std::unique_ptr<DurableWriteQueue>> NewWriteQueue(unsigned depth, DurableWriteMode mode) override;
  Result<std::vector<std::string>> ListDir(const std::string& dir) override { return base_->ListDir(dir); }
  Status CreateDir(const std::string& dir) override;
  Status SyncDir(const std::string& dir) override;
  Status Rename(const std::string& from, const std::string& to) override;
  Status Remove(const std::string& path) override;
  Status Truncate(const std::string& path, uint64_t size) override;
  Result<std::unique_ptr<DirectoryLock>> LockDir(const std::string& dir, int wait_ms) override {
    return base_->LockDir(dir, wait_ms);
  }
  std::string backend_name() const override { return "fault injection over " + base_->backend_name(); }

  // What the next write should do; internal to the wrappers.
  struct Verdict {
    enum Kind { kPass, kFail, kFailSync, kTear } kind = kPass;
    int err = 0;
    size_t keep_bytes = 0;
  };
  Verdict NextWrite();
  bool FlipsWritesTo(const std::string& path);
  Status CheckAlive(const std::string& what) const;

 private:
  std::shared_ptr<FileSystem> base_;
  std::mutex mu_;
  std::atomic<uint64_t> writes_{0};
  uint64_t fail_from_ = kNever, sync_fail_from_ = kNever, crash_at_ = kNever;
  int fail_err_ = EIO, sync_err_ = EIO;
  size_t crash_keep_ = 0;
  std::string fail_open_part_;  // empty: none
  std::string hold_open_part_;  // empty: none
  std::string flip_part_;       // empty: none
  std::condition_variable released_;
  std::atomic<unsigned> opens_held_{0};
  int fail_open_err_ = 0;
  std::atomic<bool> fail_reserve_{false};
  std::atomic<bool> crashed_{false};
};

}  // namespace vecwal
