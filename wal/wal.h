// Wal: vecwal's write-ahead log, the one header a user of wal/ needs.
//
// Open() locks the directory, reads the log back (verifying every record and
// handing each to an optional visitor), cuts a torn tail, and starts the
// group-commit writer where the valid log ends. Appends return once durable.
//
// Thread safety: every method may be called from any thread. A directory is
// held by one Wal at a time, across processes (a LOCK file, flock).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <future>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <string>
#include <vector>

#include "io/file_system.h"
#include "wal/format.h"
#include "wal/group_commit_writer.h"
#include "wal/log_reader.h"
#include "wal/log_seal.h"
#include "wal/record_ops.h"

namespace vecwal::wal {

struct WalOptions {
  std::shared_ptr<FileSystem> fs;  // null: the real one, io_uring where allowed
  uint64_t segment_bytes = 64ull << 20;
  unsigned max_writes_in_flight = 8;
  size_t max_write_bytes = 1 << 20;  // a flush gathers at most this much
  // While writes are in flight, another starts only with this much gathered
  // (or a full buffer); with none in flight, a write starts at once.
  size_t min_concurrent_write_bytes = 64 << 10;
  DurableWriteMode durable_mode = DurableWriteMode::kDsyncWrite;
  RecoveryMode recovery_mode = RecoveryMode::kTolerateTail;
  size_t spare_segments = 2;  // retired segments kept for recycling
  int lock_wait_ms = 2000;
  // The log never hands out an LSN below this: a store whose checkpoint is at
  // LSN X passes X + 1, so a log that lost its tail cannot reuse LSNs.
  uint64_t min_next_lsn = 1;
  // Time slice the log's submission thread asks for (io/time_slice.h), so that
  // a completion is published at once beside CPU-bound threads; 0 leaves it.
  uint64_t thread_slice_us = 100;
  // The log seals its durable LSN (wal/log_seal.h) this often while it moves,
  // so that after a crash only the records of the last interval can be lost
  // to damage unseen (cut as a torn tail); one 4 KiB synced write each time.
  // 0: only at Close and ReleaseBefore.
  uint64_t seal_interval_ms = 1000;
};

struct WalStats {
  WriterStats writer;
  uint64_t durable_lsn = 0;
  std::string backend;
};

class Wal {
 public:
  // Opens or creates the log in `dir`. `visit`, when given, sees every record
  // with LSN >= replay_from before the writer starts.
  static Result<std::unique_ptr<Wal>> Open(const std::string& dir, WalOptions opts,
                                           const RecordVisitor& visit = {}, uint64_t replay_from = 1);
  ~Wal();

  Result<uint64_t> Append(RecordType type, std::span<const std::byte> payload);
  Result<uint64_t> Append(const Op& op);
  Status AppendMany(std::span<const RecordView> recs, std::vector<uint64_t>* lsns = nullptr);
  void AppendAsync(RecordType type, std::span<const std::byte> payload, AppendCallback done);
  // Appends a batch without waiting; `done` runs once with the last LSN when
  // every record of it is durable. The payloads are copied before it returns.
  void AppendManyAsync(std::span<const RecordView> recs, AppendCallback done);
  std::future<Result<uint64_t>> AppendAsync(RecordType type, std::span<const std::byte> payload);

  // Releases (recycles or removes) every segment whose LSNs are all < lsn,
  // then seals the log.
  Result<size_t> ReleaseBefore(uint64_t lsn);
  // Records the durable LSN in `dir`/SEAL (wal/log_seal.h): a later Open
  // refuses a log that ends below it, where it would have cut the lost
  // records as a torn tail. Close and ReleaseBefore do it too.
  Status Seal();

  uint64_t durable_lsn() const { return writer_->durable_lsn(); }
  const LogScanReport& open_report() const { return report_; }
  const std::string& dir() const { return dir_; }
  Status status() const { return writer_->status(); }
  WalStats stats() const;
  // Writes what is pending and stops; the destructor does it too.
  Status Close();

 private:
  Wal() = default;
  void SealerLoop();
  std::string dir_;
  WalOptions opts_;
  std::unique_ptr<DirectoryLock> lock_;
  std::unique_ptr<SegmentAllocator> alloc_;
  std::unique_ptr<GroupCommitWriter> writer_;
  std::mutex seal_mu_;
  std::unique_ptr<LogSeal> seal_;  // under seal_mu_
  std::condition_variable seal_cv_;
  bool stop_sealer_ = false;  // under seal_mu_
  std::thread sealer_;        // seals every seal_interval_ms
  LogScanReport report_;
};

}  // namespace vecwal::wal
