// DurableIndex: a vector index whose every acknowledged write survives a
// crash. The one header an embedding server needs.
//
// A write is validated, appended to the log and made durable, then applied
// to the index: log order is apply order, and a search never sees a write a
// crash could undo. Open() loads the newest checkpoint that verifies (the one
// before it if not, and says so), then replays the log after it, coalesced to
// each id's net effect and applied in large batches.
//
// Writes from many threads share the log's group commit: a writer validates
// and places its record in order under a short lock, waits for durability
// with the others, then applies, strictly in log order (whichever writer
// finds the next op ready applies it), and returns once its op is visible.
// Applies go to the recent writes (RecentWrites), which searches scan beside
// the index, so a writer never waits for a search; the store's applier
// thread merges them into the index when they reach recent_writes_merge_at.
// A merge sets them aside (new writes start a new set, which hides theirs)
// and moves them into the index in steps of about merge_hold_us, each of
// which waits for the searches in progress: searches and applies go on
// between the steps, however long the index's adds take (HNSW's).
// A checkpoint holds no writer back: it lets the ops placed before it apply
// and merge, then takes the index as merged, at the LSN of its last op (ops
// placed meanwhile wait in the recent writes, and in the log). With merges
// held, it begins an export of the index (FAISS's id map is copied, not the
// vectors) and freezes the payloads (PayloadStore: nothing is copied); the
// file is then written from the live index, in pieces, while merges go on:
// the vectors a merge changes before the export reached them are kept as they
// were (copy on write), and payload writes wait in an overlay until the file
// is written. Index types without an export (all but flat ones) are copied in
// memory instead, which merges wait for. Automatic checkpoints run on a
// thread of the store's; writers wait for one only where the log since the
// last reaches a limit (stall_writes_at_intervals), which bounds the log a
// reopen replays.
//
// Thread safety: all methods may be called from any thread; searches run
// concurrently with each other and with writes, and wait only for a merge's step.
#pragma once

#include <cstdint>
#include <atomic>
#include <chrono>
#include <condition_variable>
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

#include "index/vector_index.h"
#include "recovery/checkpoint_file.h"
#include "recovery/payload_store.h"
#include "recovery/recent_writes.h"
#include "recovery/writer_priority_mutex.h"
#include "wal/wal.h"

namespace vecwal::recovery {

struct DurableIndexOptions {
  std::string dir;
  index::IndexSpec spec;
  wal::RecoveryMode recovery_mode = wal::RecoveryMode::kTolerateTail;
  size_t max_payload_bytes = 64 << 10;
  // Log bytes (records and their headers) after which the store's
  // checkpointer thread takes a checkpoint; a reopened store counts the tail
  // it replayed. 0: only explicit Checkpoint().
  uint64_t checkpoint_every_log_bytes = 256ull << 20;
  // Writers wait once the log since the last checkpoint reaches this many
  // checkpoint_every_log_bytes, until a checkpoint takes it below. Reopening
  // replays that log, so this bounds the time to reopen: where checkpoints
  // take longer than writers take to fill an interval (HNSW's take seconds),
  // they run back to back and the log grew for as long as the writers kept
  // their pace. While automatic checkpoints fail, a write past it fails with
  // the checkpoint's error and logs nothing, and the checkpointer tries again
  // every second. Async writes wait in the call. 0, or no automatic
  // checkpoints: no limit.
  uint64_t stall_writes_at_intervals = 4;
  size_t keep_checkpoints = 2;
  // A search call holds the index (and so holds back applies) for about this
  // long at a time, taking its queries in chunks; 0: a whole call at once,
  // which batches queries best but makes writers wait for the longest search.
  uint64_t search_hold_us = 5000;
  // Writes applied beside the index (see RecentWrites) before the applier
  // thread merges them into it. A write that leaves four times this many
  // merges them itself before it returns. 0: every write applies straight
  // into the index, waiting for the searches in progress. Each search scans
  // them exactly and has the index leave out the ids they hide.
  size_t recent_writes_merge_at = 1024;
  // A merge of the recent writes into the index holds searches and applies
  // back for about this long at a time: it adds the vectors in steps sized
  // from the time the last step took. 0: a whole merge at once. An add to
  // HNSW takes milliseconds a vector here, so a merge of 1024 at once held
  // every search for seconds. Steps grow while nobody waits for them, and a
  // step that someone waited for is followed by as long with nothing held.
  uint64_t merge_hold_us = 5000;
  // Time slice (io/time_slice.h) asked for by the store's applier thread and
  // by each thread the first time it makes a blocking write here: a woken
  // writer then preempts CPU-bound threads (searches) rather than waiting out
  // their slices, several times per write. It changes the calling thread's
  // scheduling for good (its CPU share stays); 0 leaves every thread as it is.
  uint64_t writer_slice_us = 100;
  // A graph index (HNSW) cannot remove vectors: removed ones stay in it as
  // tombstones, which searches step over, until a checkpoint rebuilds it
  // without them once they are at least this share of its vectors (0: at
  // every checkpoint that finds any). The rebuild takes as long as building
  // the index did and runs beside writes and searches; the checkpoint then
  // holds searches and merges only to add what changed meanwhile. Tombstones below the
  // share are checkpointed as they are.
  double compact_tombstone_ratio = 0.1;
  wal::WalOptions wal;  // wal.fs is shared with checkpoints
};

struct RecoveryStats {
  uint64_t checkpoint_lsn = 0;  // 0: none
  std::string checkpoint_note;  // a fallback to an older checkpoint, said here
  // log_read_s: read and verify; decode_s: records to ops; apply_s: into the
  // index, as far as replay waited for it (the phases add up to total_s).
  // apply_busy_s: the index's own adds, mostly overlapping the log read.
  double checkpoint_load_s = 0, log_read_s = 0, decode_s = 0, apply_s = 0, total_s = 0;
  double apply_busy_s = 0;
  uint64_t records_replayed = 0, bytes_replayed = 0;  // bytes: record payloads
  uint64_t log_bytes_read = 0;                        // segment bytes read to find them
  std::string tail_note;
  std::vector<wal::DroppedRange> dropped;
};

struct Entry {
  std::vector<float> vector;
  std::vector<std::byte> payload;
};

// Several ops applied all or none, in order.
class WriteBatch {
 public:
  void Upsert(uint64_t id, std::span<const float> v, std::span<const std::byte> payload = {});
  void Remove(uint64_t id);
  const wal::BatchOp& op() const { return op_; }
  size_t size() const { return op_.ops.size(); }

 private:
  wal::BatchOp op_;
};

struct DurableIndexStats {
  uint64_t size = 0, durable_lsn = 0, last_checkpoint_lsn = 0, log_bytes_since_checkpoint = 0;
  // Since Open: ops applied (visible), and the runs they were applied in; the
  // merges of the recent writes into the index (each step waits for the
  // searches in progress), the steps their adds took (see merge_hold_us),
  // and the ids written and not yet merged.
  uint64_t ops_applied = 0, apply_holds = 0, merges = 0, merge_steps = 0, recent_writes = 0;
  // Removed vectors a graph index (HNSW) still holds, and its rebuilds
  // without them since Open (see compact_tombstone_ratio).
  uint64_t tombstones = 0, compactions = 0;
  // Since Open: checkpoints written (by Checkpoint(), Train() or
  // automatically), and how long the latest took. Automatic ones are taken
  // on a thread of the store's (no write waits for one); one that fails
  // fails no write (the log holds them all) and is counted here, with its
  // error, and tried again after another checkpoint_every_log_bytes of log
  // (until the log limit: see stall_writes_at_intervals).
  uint64_t checkpoints = 0, auto_checkpoint_failures = 0;
  double last_checkpoint_s = 0;
  // Writes that waited at the log limit (stall_writes_at_intervals), and
  // their time waiting, since Open; and those waiting there now.
  uint64_t stalled_writes = 0;
  double write_stall_s = 0;
  uint64_t writes_waiting = 0;
  std::string last_auto_checkpoint_error;
  RecoveryStats recovery;
};

class DurableIndex {
 public:
  static Result<std::unique_ptr<DurableIndex>> Open(const DurableIndexOptions& opts);
  ~DurableIndex();

  Status Insert(uint64_t id, std::span<const float> v, std::span<const std::byte> payload = {});
  Status Update(uint64_t id, std::span<const float> v, std::span<const std::byte> payload = {});
  Status Upsert(uint64_t id, std::span<const float> v, std::span<const std::byte> payload = {});
  Status Remove(uint64_t id);
  Status Apply(const WriteBatch& batch);

  // Async forms: the op is validated and placed in the log before the call
  // returns (so calls from one thread keep their order), and `done` runs
  // once it is durable and visible to searches, or with the error that
  // stopped it. A refused op calls `done` at once, on the caller's thread;
  // otherwise it runs on the store's applier thread, in the order the ops
  // were placed, so it must be short and must not make blocking writes on
  // this store (async ones are fine). Where the log is at its limit
  // (stall_writes_at_intervals), the call waits for room before it places
  // the op, as a blocking write does. Close() waits for every op placed
  // before it.
  using WriteCallback = std::function<void(const Status&)>;
  void InsertAsync(uint64_t id, std::span<const float> v, std::span<const std::byte> payload, WriteCallback done);
  void UpdateAsync(uint64_t id, std::span<const float> v, std::span<const std::byte> payload, WriteCallback done);
  void UpsertAsync(uint64_t id, std::span<const float> v, std::span<const std::byte> payload, WriteCallback done);
  void RemoveAsync(uint64_t id, WriteCallback done);
  void ApplyAsync(const WriteBatch& batch, WriteCallback done);
  std::future<Status> UpsertAsync(uint64_t id, std::span<const float> v, std::span<const std::byte> payload = {});
  std::future<Status> RemoveAsync(uint64_t id);
  std::future<Status> ApplyAsync(const WriteBatch& batch);

  Result<index::SearchResults> Search(std::span<const float> queries, size_t k) const;
  Result<Entry> Get(uint64_t id) const;
  bool Contains(uint64_t id) const;
  size_t Size() const;

  // Trains an IVF/PQ index on `sample` (n x dim floats) and checkpoints the
  // trained empty index at once, so recovery never trains again. Only before
  // the first write; an index that needs no training refuses it.
  Status Train(std::span<const float> sample);
  // True while the index still needs Train() before it takes writes.
  bool NeedsTraining() const;

  // Writes a checkpoint of every op acknowledged before the call (and of
  // some placed meanwhile) and returns its LSN; where nothing was logged
  // since the newest checkpoint, that one already holds this state and its
  // LSN is returned with nothing written. Writers are not held meanwhile.
  Result<uint64_t> Checkpoint();
  DurableIndexStats Stats() const;
  Status Close();

 private:
  DurableIndex() = default;
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
  void FinishMergeLocked();
  // Takes merge steps, or waits for another merge's, until fewer than
  // RecentHardBound() writes are unmerged.
  void MergeToBound();
  void NoteMergeStep();  // counts a step and wakes the writers waiting for one
  // Under recent_mu_ (either way): the id's entry in the newest recent
  // writes, else in the set a merge is moving; nothing: the index answers.
  std::optional<RecentWrites::Found> FindRecentLocked(uint64_t id) const;
  size_t RecentHardBound() const { return 4 * opts_.recent_writes_merge_at; }
  Status failed() const;
  void SetFailed(const Status& s);
  void SetFailedNoNotify(const Status& s);  // under apply_mu_
  Status Validate(uint64_t id, std::span<const float> v, std::span<const std::byte> payload) const;
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
  CheckpointPacing LogPacing() const;  // under ckpt_mu_: wal_ stays
  Status Recover(RecoveryStats* stats);

  DurableIndexOptions opts_;
  std::shared_ptr<FileSystem> fs_;
  std::unique_ptr<wal::Wal> wal_;
  std::unique_ptr<index::VectorIndex> index_;
  PayloadStore payloads_;
  // Lock order: ckpt_mu_, write_mu_, merge_mu_, state_mu_, recent_mu_, apply_mu_.
  std::mutex ckpt_mu_;                   // one checkpoint at a time; Close waits for it
  mutable std::mutex write_mu_;          // placement order; Train, Close
  std::mutex merge_mu_;                  // one merge at a time
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
  // index_->is_trained(), for writers: they hold no lock that keeps a
  // checkpoint from putting a rebuilt index in place.
  std::atomic<bool> trained_{false};
  std::atomic<size_t> merge_left_{0};           // merging_'s rows not yet added
  std::atomic<int> bound_waiters_{0};           // writers in MergeToBound
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
  std::atomic<uint64_t> log_bytes_since_checkpoint_{0};
  uint64_t checkpoint_counted_bytes_ = 0;  // of them, those the checkpoint under way holds; under ckpt_mu_
  std::chrono::steady_clock::time_point checkpoint_started_;  // under ckpt_mu_
  std::atomic<uint64_t> checkpoints_{0}, last_checkpoint_ns_{0};
  std::atomic<uint64_t> ops_applied_{0}, apply_holds_{0}, merges_{0}, merge_steps_{0}, compactions_{0};
  RecoveryStats recovery_;

  // Placement and apply order. seq numbers follow LSN order because records
  // are placed in the log under write_mu_.
  uint64_t placed_seq_ = 0;  // under write_mu_
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
  std::atomic<uint64_t> stalled_writes_{0}, write_stall_ns_{0}, writes_waiting_{0};
  mutable std::atomic<uint64_t> search_ns_per_query_{0};  // the latest search's time per query

  mutable std::mutex fail_mu_;
  Status failed_;
};

}  // namespace vecwal::recovery
