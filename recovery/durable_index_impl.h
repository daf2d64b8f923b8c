// DurableIndexImpl: the store behind DurableIndex (durable_index.h), with
// its locks, threads and the index's state. Only recovery/ includes this.
// Its methods are defined by part: durable_index.cc (open, recovery, close,
// stats), durable_index_writes.cc, durable_index_merges.cc (applies and
// merges), durable_index_reads.cc, durable_index_checkpoints.cc and
// durable_index_maintenance.cc (scrub, backup).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "recovery/checkpoint_file.h"
#include "recovery/durable_index.h"
#include "recovery/payload_store.h"
#include "recovery/recent_writes.h"
#include "recovery/writer_priority_mutex.h"

namespace vecwal::recovery {

class DurableIndexImpl final : public DurableIndex {
 public:
  static Result<std::unique_ptr<DurableIndex>> Open(const DurableIndexOptions& opts);
  ~DurableIndexImpl() override;
  Status Insert(uint64_t id, std::span<const float> v, std::span<const std::byte> payload) override;
  Status Update(uint64_t id, std::span<const float> v, std::span<const std::byte> payload) override;
  Status Upsert(uint64_t id, std::span<const float> v, std::span<const std::byte> payload) override;
  Status Remove(uint64_t id) override;
  Status Apply(const WriteBatch& batch) override;
  void InsertAsync(uint64_t id, std::span<const float> v, std::span<const std::byte> payload,
                   WriteCallback done) override;
  void UpdateAsync(uint64_t id, std::span<const float> v, std::span<const std::byte> payload,
                   WriteCallback done) override;
  void UpsertAsync(uint64_t id, std::span<const float> v, std::span<const std::byte> payload,
                   WriteCallback done) override;
  void RemoveAsync(uint64_t id, WriteCallback done) override;
  void ApplyAsync(const WriteBatch& batch, WriteCallback done) override;
  using DurableIndex::Search;
  Result<index::SearchResults> Search(std::span<const float> queries, size_t k,
                                      const index::SearchParams& params) const override;
  Result<Entry> Get(uint64_t id) const override;
  Result<uint64_t> Scan(size_t piece, const ScanVisitor& visit) const override;
  bool Contains(uint64_t id) const override;
  size_t Size() const override;
  Status Train(std::span<const float> sample) override;
  bool NeedsTraining() const override;
  Result<uint64_t> Checkpoint() override;
  Result<ScrubReport> Scrub() override;
  Result<BackupInfo> Backup(const std::string& dest) override;
  DurableIndexStats Stats() const override;
  Status Close() override;
  using DurableIndex::ApplyAsync;
  using DurableIndex::RemoveAsync;
  using DurableIndex::UpsertAsync;

 private:
  using Clock = std::chrono::steady_clock;
  DurableIndexImpl() = default;
  enum class Need { kAbsent, kPresent, kAny };
  Status Write(const wal::Op& op, uint64_t id, Need need);
  struct AsyncWrite;
  void WriteAsync(wal::Op op, uint64_t id, Need need, WriteCallback done);
  void OnAsyncDurable(const std::shared_ptr<AsyncWrite>& w, const Status& s, uint64_t lsn);
  void ApplierLoop();
  void CheckpointerLoop();
  void NoteLogged(uint64_t bytes);  // a durable op's log bytes; wakes the checkpointer when due
  uint64_t LogLimit() const;        // log bytes at which writers wait; 0: none
  Status WaitForLogRoom();          // a writer's wait at the log limit
  void ForgetCheckpointedBytes();   // takes a written checkpoint's bytes off the log's count
  // Checks presence for an op that needs it; under write_mu_.
  Status CheckNeedLocked(uint64_t id, Need need);
  bool PresentLocked(uint64_t id);
  void NoteOverlay(const wal::Op& op, uint64_t seq);
  void ApplyReady(std::unique_lock<std::mutex>& a);  // a holds apply_mu_; released while applying
  Status DrainTo(uint64_t seq);  // waits until every op placed up to seq is applied
  // Moves the recent writes into the index, in steps; takes merge_mu_, then
  // state_mu_ and recent_mu_ for each step.
  void MergeRecent();
  // Under merge_mu_: sets the recent writes aside, or adds the next rows of
  // the set aside; `pause`: how long to hold nothing after it.
  bool MergeStepLocked(std::chrono::nanoseconds* pause);
  void MergeThrough(uint64_t lsn, std::unique_lock<std::mutex>& m, bool hold);
  // Takes merge steps, or waits for another merge's, until fewer than
  // RecentHardBound() writes are unmerged.
  void MergeToBound();
  void NoteMergeStep();  // counts a step and wakes the writers waiting for one
  // Under merge_mu_ and state_mu_ held exclusively, after a merge step's
  // adds: begins a growth of the index's storage where one is due, copied
  // on grower_; each merge step takes it once whole.
  void StartGrowth();
  void GrowStorage();  // grower_: copies the growth in steps, each with state_mu_ shared
  // Under recent_mu_ (either way): the id's entry in the newest recent
  // writes, else in the set a merge is moving; nothing: the index answers.
  std::optional<RecentWrites::Found> FindRecentLocked(uint64_t id) const;
  size_t RecentHardBound() const { return 4 * opts_.recent_writes_merge_at; }
  Status failed() const;
  void SetFailed(const Status& s);
  void SetFailedNoNotify(const Status& s);  // under apply_mu_
  Status Validate(uint64_t id, std::span<const float> v, std::span<const std::byte> payload) const;
  // `made` through the options' wrap_index, where there is one.
  Result<std::unique_ptr<index::VectorIndex>> Wrapped(std::unique_ptr<index::VectorIndex> made) const;
  struct Snapshot {
    uint64_t lsn = 0, live = 0;
    std::vector<std::byte> index_bytes;
    const Payloads* payloads = nullptr;  // payloads_ frozen: thawed once persisted
  };
  // Under ckpt_mu_, before a checkpoint holds the index: builds compaction_
  // where the tombstones call for it.
  Status RebuildWithoutTombstones();
  // Under ckpt_mu_; returns the checkpoint LSN, holding merge_mu_ in `m`.
  Result<uint64_t> QuiesceIndex(std::unique_lock<std::mutex>& m);
  // Under ckpt_mu_, with the index quiesced at `lsn` (merge_mu_ held):
  // copies it; `room`: a buffer for the index bytes, reserved ahead.
  Result<Snapshot> CopyIndex(uint64_t lsn, std::vector<std::byte> room);
  uint64_t SnapshotBytesEstimate(uint64_t live) const;
  Result<uint64_t> Persist(Snapshot&& snap);    // under ckpt_mu_, not write_mu_
  Result<uint64_t> FinishCheckpoint(uint64_t lsn);
  // Under ckpt_mu_: checkpoint `lsn`, copied into DIR/copy and read back
  // whole (kCheckpointCopyDir), in place of any other copy; and the copies
  // removed, once the store keeps enough generations again.
  Status WriteCheckpointCopyLocked(uint64_t lsn);
  void RemoveCheckpointCopiesLocked();
  Result<uint64_t> CheckpointLocked();  // Checkpoint() under ckpt_mu_
  // Under ckpt_mu_: the checkpoint at `lsn` did not verify, and is no
  // generation: the next checkpoint retires it (FinishCheckpoint).
  void NoGenerationLocked(uint64_t lsn);
  CheckpointPacing LogPacing() const;  // under ckpt_mu_: wal_ stays
  Status Recover(RecoveryStats* stats);

  DurableIndexOptions opts_;
  std::shared_ptr<FileSystem> fs_;
  // DIR/LOCK, taken before a checkpoint is read: a second Open of a store in
  // use is refused before it loads a whole index (the log's own lock comes
  // only after that); held until Close.
  std::unique_ptr<DirectoryLock> lock_;
  std::unique_ptr<wal::Wal> wal_;
  std::unique_ptr<index::VectorIndex> index_;
  PayloadStore payloads_;
  // Lock order: ckpt_mu_, write_mu_, merge_mu_, state_mu_, recent_mu_, apply_mu_.
  std::mutex ckpt_mu_;                   // one checkpoint at a time; Close waits for it
  mutable std::mutex write_mu_;          // placement order; Train, Close
  mutable std::mutex merge_mu_;          // one merge at a time; a Scan holds merges back
  mutable WriterPriorityMutex state_mu_;  // index_ and payloads_: readers shared, merges exclusive
  // recent_: readers shared (after state_mu_), applies exclusive. A reader
  // sees the index and the recent writes at one point in log order: a merge
  // holds both for each of its steps. The ids the index holds change only in
  // a merge's steps, so a presence check (Contains) reads them under
  // recent_mu_ alone.
  mutable WriterPriorityMutex recent_mu_;
  std::unique_ptr<RecentWrites> recent_;
  // The recent writes a merge is moving into the index, set aside from
  // recent_ (whose entries hide theirs) and never changed while set: the
  // merge reads them with no lock. Set and cleared under recent_mu_ (cleared
  // with state_mu_ too); readers look here after recent_ and before the
  // index, which hides every id here, whether the merge has added it yet or not.
  std::unique_ptr<RecentWrites> merging_;
  std::unique_ptr<RecentWrites> spare_recent_;  // a merged set's memory, for the next; under merge_mu_
  uint64_t merge_ns_per_row_ = 0;               // the last merge step's; under merge_mu_
  // Where the merge of merging_ stands; under merge_mu_.
  struct MergeCursor {
    std::vector<uint64_t> added;           // ids the set upserts, in its order
    std::vector<const std::byte*> rows;    // their vectors, in the set
    size_t at = 0;                         // added[0, at) are in the index
    size_t unwatched = 0;                  // steps in a row that nobody waited for
  } cursor_;
  uint64_t recent_last_lsn_ = 0;   // the LSN of the last op applied to recent_; under recent_mu_
  uint64_t merging_last_lsn_ = 0;  // merging_'s; under merge_mu_
  // The index and payloads_ hold exactly the ops up to it whenever no merge
  // is under way: a checkpoint's LSN.
  std::atomic<uint64_t> index_lsn_{0};
  // Whether a trained index_ is durable (a checkpoint holds it), for writers:
  // they hold no lock that keeps a checkpoint from putting a rebuilt index in
  // place. Under write_mu_ where it changes.
  std::atomic<bool> trained_{false};
  std::atomic<size_t> merge_left_{0};           // merging_'s rows not yet added
  std::atomic<int> bound_waiters_{0};           // writers in MergeToBound
  // The thread copying a growth of the index's storage (index::VectorIndex::
  // BeginGrowth), started and joined under merge_mu_; while it runs it
  // takes state_mu_ shared for each step, and no other lock.
  std::thread grower_;
  std::atomic<bool> growing_{false};      // grower_ has steps left: none starts meanwhile
  std::atomic<bool> stop_growing_{false};  // Close: set under merge_mu_
  std::atomic<uint64_t> storage_growths_{0};
  std::mutex step_mu_;                          // a leaf: for step_cv_, merge_steps_ changes under it
  std::condition_variable step_cv_;             // a merge step was taken
  // A compaction of the index built beside writes, which the checkpoint
  // that built it puts in place; under ckpt_mu_, destroyed under state_mu_.
  std::unique_ptr<index::IndexCompaction> compaction_;
  std::atomic<size_t> recent_size_{0};  // recent_->size(), read without the lock
  std::atomic<uint64_t> last_checkpoint_lsn_{0};  // written under ckpt_mu_
  // A checkpoint at last_checkpoint_lsn_ that verified is on disk (this
  // process loaded or wrote it); under ckpt_mu_.
  bool checkpoint_on_disk_ = false;
  // The LSNs of checkpoints that did not verify, at Open or in a Scrub;
  // under ckpt_mu_. No generation: the next checkpoint retires them, and
  // keeps the log from the checkpoints that did.
  std::vector<uint64_t> unverified_checkpoints_;
  std::atomic<uint64_t> log_bytes_since_checkpoint_{0};
  uint64_t checkpoint_counted_bytes_ = 0;  // of them, those the checkpoint under way holds; under ckpt_mu_
  std::chrono::steady_clock::time_point checkpoint_started_;  // under ckpt_mu_
  std::atomic<uint64_t> checkpoints_{0}, last_checkpoint_ns_{0};
  std::atomic<uint64_t> ops_applied_{0}, apply_holds_{0}, merges_{0}, merge_steps_{0}, compactions_{0};
  RecoveryStats recovery_;

  // Placement and apply order. seq numbers follow LSN order because records
  // are placed in the log under write_mu_.
  std::atomic<uint64_t> placed_seq_{0};  // changes under write_mu_; a search reads it without (writes in flight?)
  uint64_t last_snapshot_bytes_ = 0, last_snapshot_live_ = 0;  // under ckpt_mu_
  // Presence of ids whose ops are placed but not yet applied: id -> (present, seq).
  std::unordered_map<uint64_t, std::pair<bool, uint64_t>> overlay_;  // under write_mu_
  std::mutex apply_mu_;
  std::condition_variable applied_cv_;
  struct ReadyOp {
    const wal::Op* op;
    uint64_t lsn;
  };
  std::map<uint64_t, ReadyOp> ready_;  // durable, not yet applied; owners wait
  bool applying_ = false;                     // a writer is applying a run; under apply_mu_
  // Async ops durable and waiting to be applied, by seq: their owner is the
  // applier thread, which applies them when no blocking writer does.
  std::map<uint64_t, std::shared_ptr<AsyncWrite>> async_;  // under apply_mu_
  // Applied async ops whose callbacks the applier thread is to run, in order.
  std::vector<std::pair<std::shared_ptr<AsyncWrite>, Status>> completions_;  // under apply_mu_
  std::thread applier_;
  bool stop_applier_ = false;  // under apply_mu_
  bool merge_wanted_ = false;  // the recent writes reached the merge bound; under apply_mu_
  std::atomic<uint64_t> applied_seq_{0};
  // Automatic checkpoints: checkpointer_ takes one once the log bytes since
  // the last reach auto_due_at_ (checkpoint_every_log_bytes, or more after a
  // failure), or a second after a failure where writers wait at LogLimit().
  std::thread checkpointer_;
  mutable std::mutex auto_mu_;  // taken last: under it, only failed()'s fail_mu_
  std::condition_variable auto_cv_;
  std::condition_variable room_cv_;               // writers at the log limit wait here, with auto_mu_
  bool stop_checkpointer_ = false;                // under auto_mu_
  uint64_t auto_checkpoint_failures_ = 0;         // under auto_mu_
  Status last_auto_checkpoint_error_;             // under auto_mu_
  bool auto_checkpoints_failing_ = false;         // since the last failure, until a checkpoint is written; under auto_mu_
  std::chrono::steady_clock::time_point auto_retry_at_{};  // under auto_mu_
  std::atomic<uint64_t> auto_due_at_{0};
  bool checkpoint_copy_wanted_ = false;  // under ckpt_mu_: a Scrub found the copy damaged
  std::atomic<uint64_t> stalled_writes_{0}, write_stall_ns_{0}, writes_waiting_{0};
  // The latest search's time per query, in chunks below the index's
  // SearchBatchFloor ([0]) and from it on ([1]): they differ eightfold; and
  // in the latest chunk from it on, grown or not ([2]), which bounds growth.
  // Only of searches at opts_.search: a call with other knobs keeps its own
  // (an nprobe of 256 costs a hundred times one of 1).
  mutable std::array<std::atomic<uint64_t>, 3> search_ns_per_query_{};
  // The same for searches with a filter, which cost another time a query
  // (a flat scan compares only the ids it passes, without BLAS).
  mutable std::array<std::atomic<uint64_t>, 3> filtered_search_ns_per_query_{};
  size_t search_floor_ = 1;  // index_->SearchBatchFloor(), once recovered
  mutable std::atomic<size_t> search_unwatched_{0};  // chunks from the floor on in a row that nobody waited for
  mutable std::atomic<size_t> searches_{0};               // Search calls under way
  mutable std::atomic<uint64_t> search_holds_{0};

  mutable std::mutex fail_mu_;
  Status failed_;
};

// An async write, from its placement until its callback has run.
struct DurableIndexImpl::AsyncWrite {
  wal::Op op;
  std::vector<std::byte> bytes;
  uint64_t seq = 0;
  WriteCallback done;
  std::atomic<bool> refused{false};  // the log refused it before placing it
};

}  // namespace vecwal::recovery
