// GroupCommitWriter: appends records from any number of threads and
// acknowledges each one only once it is durable.
//
// Appenders copy their record, under one mutex, into the open flush buffer of
// the active segment and get the next LSN. One submission thread seals
// whatever is gathered whenever a write slot is free, pads it with zeros to
// the block size, and keeps up to `max_writes_in_flight` durable writes in
// flight. Writes complete out of order; the durable LSN advances only over a
// contiguous prefix of completed writes, and an append returns (or its
// callback runs) only when its LSN is inside that prefix.
//
// A rotation drains every write to the old segment, then writes the new
// segment's header durably before any record goes there: the reader relies on
// it to tell a torn tail from a hole.
//
// Failure is sticky: the first failed write or sync fails every append not
// yet acknowledged and every later one, and nothing is retried.
//
// Thread safety: every public method may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "io/aligned_buffer.h"
#include "io/file_system.h"
#include "wal/format.h"
#include "wal/segment_allocator.h"

namespace vecwal::wal {

struct RecordView {
  RecordType type = RecordType::kOpaque;
  std::span<const std::byte> payload;
};

// Runs on the submission thread once the record is durable (OK) or the log
// has failed; it must not block for long.
using AppendCallback = std::function<void(const Status&, uint64_t lsn)>;

struct WriterOptions {
  uint64_t segment_bytes = 0;
  uint32_t block_size = 0;
  unsigned max_writes_in_flight = 8;
  size_t max_write_bytes = 1 << 20;
  size_t min_concurrent_write_bytes = 64 << 10;
  uint64_t thread_slice_us = 0;  // asked for by the submission thread; 0: the default
};

// Where the writer starts: an activated segment and the next free offset.
struct WriterStart {
  uint64_t next_lsn = 1;
  uint64_t segment_id = 0;
  uint64_t epoch = 0;
  uint64_t offset = 0;
  std::unique_ptr<File> file;
  std::map<uint64_t, uint64_t> live_first_lsn;  // segment id -> first LSN, for release
};

struct WriterStats {
  uint64_t records = 0;
  uint64_t payload_bytes = 0;
  uint64_t flushes = 0;
  uint64_t bytes_written = 0;
  uint64_t rotations = 0;
  uint64_t segments_released = 0;
};

class GroupCommitWriter {
 public:
  GroupCommitWriter(FileSystem& fs, std::string dir, const WriterOptions& opts, std::unique_ptr<DurableWriteQueue> q,
                    SegmentAllocator& alloc, WriterStart start);
  ~GroupCommitWriter();  // Close()
  GroupCommitWriter(const GroupCommitWriter&) = delete;
  GroupCommitWriter& operator=(const GroupCommitWriter&) = delete;

  // Appends one record and waits until it is durable. Returns its LSN.
  Result<uint64_t> Append(const RecordView& rec);
  // Appends records in order and waits until all are durable. `lsns`, when
  // given, receives each record's LSN (consecutive unless other threads append).
  Status AppendMany(std::span<const RecordView> recs, std::vector<uint64_t>* lsns);
  // Appends without waiting; `done` runs when durable or failed.
  void AppendAsync(const RecordView& rec, AppendCallback done);
  // Appends records in order without waiting; `done` runs once, with the last
  // record's LSN, when all of them are durable (or with the error). Lets one
  // thread keep several batches in flight, as a raw device loop keeps several
  // writes.
  void AppendManyAsync(std::span<const RecordView> recs, AppendCallback done);

  // Releases every segment whose records all have LSN < lsn; never the
  // active one. Returns how many were released.
  Result<size_t> ReleaseBefore(uint64_t lsn);

  uint64_t durable_lsn() const { return durable_.load(std::memory_order_acquire); }
  Status status() const;
  WriterStats stats() const;
  // Writes what is pending, stops the submission thread; returns the failure,
  // if the log failed.
  Status Close();

 private:
  // What the blocking appenders whose records one flush carries wait on: the
  // submission thread sets it once and wakes them all with one call, not one
  // wake per appender (which kept it ~1 us per appender from the device).
  struct WakeGroup {
    enum : uint32_t { kPending, kDurable, kFailed };
    std::atomic<uint32_t> state{kPending};
  };
  struct Flush {
    AlignedBuffer buf;
    std::shared_ptr<WakeGroup> group = std::make_shared<WakeGroup>();
    size_t used = 0;
    uint64_t segment_id = 0, epoch = 0, offset = 0;
    uint64_t first_lsn = 0, last_lsn = 0;
    bool done = false;
    // A flush dropped unwritten (the log failed) fails its waiters.
    ~Flush() {
      if (group && group->state.load(std::memory_order_acquire) == WakeGroup::kPending)
        Signal(*group, WakeGroup::kFailed);
    }
  };

  // Under mu_.
  Status Place(const RecordView& rec, uint32_t payload_crc, uint64_t* lsn);
  void Seal();
  Status CheckRecordSize(size_t payload_len) const;
  Status PlaceMany(std::span<const RecordView> recs, std::vector<uint64_t>* lsns, std::unique_lock<std::mutex>& lk,
                   uint64_t* last);
  Status RegisterAndWait(std::unique_lock<std::mutex>& lk);
  void WakeLoopIfIdle(std::unique_lock<std::mutex>& lk);
  // Whether the open buffer, partly filled, should go out with `busy` writes
  // in flight; shared by the loop's take and the appenders' wake.
  bool OpenBufferDue(size_t busy) const;

  // Submission thread.
  void Loop();
  std::vector<std::unique_ptr<Flush>> TakeReady(bool* idle);
  Status Activate(const Flush& first);
  void Complete(const WriteCompletion& c);
  void Fail(const Status& s);
  static void Signal(WakeGroup& g, uint32_t state);
  void Publish();
  bool SpinForWork();
  // At most this much CPU per transition to idle; measured to cut the
  // single-writer p50 by ~20 us on our VM, where a cross-thread wake is slow.
  static constexpr int kIdleSpinMicros = 50;
  static constexpr int kWaiterSpinMicros = 200;
  // Yields before a waiter with company sleeps: a core that never idles
  // takes a wake in microseconds, one woken from halt on a VM in hundreds.
  static constexpr int kWaiterYields = 16;

  FileSystem& fs_;
  const std::string dir_;
  const WriterOptions opts_;
  std::unique_ptr<DurableWriteQueue> queue_;
  SegmentAllocator& alloc_;

  mutable std::mutex mu_;
  std::unique_ptr<Flush> open_;
  std::deque<std::unique_ptr<Flush>> sealed_;
  std::vector<AlignedBuffer> free_buffers_;
  std::deque<std::pair<uint64_t, AppendCallback>> callbacks_;  // async appends only
  std::atomic<int> blocked_{0};  // blocking appenders waiting
  uint64_t next_lsn_;
  uint64_t seg_id_, epoch_, seg_used_;  // where new records go
  size_t inflight_count_ = 0;  // taken by the loop and not yet retired
  int appending_many_ = 0;      // AppendMany calls between their first and last chunk
  bool loop_idle_ = false;
  bool stopping_ = false;
  Status failed_;
  WriterStats stats_;
  std::atomic<uint64_t> durable_;
  std::atomic<uint64_t> placed_{0};  // records placed, watched by SpinForWork

  // Submission thread only.
  std::deque<std::unique_ptr<Flush>> inflight_;
  std::unique_ptr<File> active_file_;
  uint64_t active_id_;

  std::mutex seg_mu_;  // guards live_ and the retiring of files
  std::map<uint64_t, uint64_t> live_;

  std::thread loop_;
};

}  // namespace vecwal::wal
