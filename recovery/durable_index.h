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
#include <functional>
#include <future>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "index/vector_index.h"
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
  // While no write is in flight a chunk holds at least the call's share of
  // FAISS's threads (index::SearchThreads()), so that a query longer than
  // this still runs on every core. Where queries cost less each in bigger
  // calls (Flat, and IVF's Flat quantizer: FAISS's BLAS product from 20
  // queries a call on), a call of that many takes at least that many a chunk.
  uint64_t search_hold_us = 5000;
  // Such chunks (of at least 20 queries) double while nobody waits for the
  // index and no write is in flight, up to about this long each (a merge
  // that comes waits for the chunk in progress); 0: they do not grow.
  uint64_t search_batch_hold_us = 250'000;
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
  // A Flat index's storage of at least this many bytes grows beside the
  // writes: once half full, a thread of the store's copies it into storage
  // twice the size, in steps between the merges, which take it once whole (a
  // merge that needs the room first finishes the copy). Smaller storage grows
  // in the merge that needs it, which copies it whole there: a merge (and so
  // the writers at their bound) waited 1.9 s for one doubling of 768 MB here.
  // 0: every storage grows ahead.
  uint64_t grow_storage_ahead_from = 64 << 20;
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
  // How hard a search of an approximate index works, for each knob a
  // Search call leaves at 0: nprobe (IVF), ef_search (HNSW). 0 here as well:
  // FAISS's own, nprobe 1 and efSearch 16, which suit small indexes only.
  // A filter, or a list of ids, set here applies to every call that sets
  // none (the list must outlive the store).
  // Open refuses a knob the index has no part for. The recent writes are
  // searched exactly whatever these say.
  index::SearchParams search;
  // Applied to every index the store makes or loads, before the log is
  // replayed into it; the index it returns is the one the store uses, and
  // must serialize what the one it was given would (checkpoints do not
  // change). gpu::OnDevice(n) puts a Flat index's vectors on CUDA device n,
  // where searches then run. Empty: the FAISS CPU index as it is.
  std::function<Result<std::unique_ptr<index::VectorIndex>>(std::unique_ptr<index::VectorIndex>)> wrap_index;
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
  // Damage in the log below the checkpoint, whose ops it holds: passed over
  // (tolerate_tail, salvage) and said here; strict refuses to open.
  std::vector<wal::DroppedRange> skipped;
};

struct ScrubReport {
  uint64_t checkpoints_verified = 0;  // kept checkpoints whose every section matched its CRC
  uint64_t log_records_verified = 0;  // durable log records read back and verified
  std::vector<std::string> problems;  // each damaged file, with offset and LSNs; empty: none
  uint64_t repaired_at_lsn = 0;       // the checkpoint written to repair them; 0: none was needed
};

struct BackupInfo {
  uint64_t lsn = 0;    // the backup holds exactly the ops up to this LSN
  uint64_t bytes = 0;  // the checkpoint file it is
  std::string path;    // that file, in the destination
};

struct Entry {
  std::vector<float> vector;
  std::vector<std::byte> payload;
};

// One piece of a Scan: entries' ids, their vectors (ids.size() x dim
// floats, as Get returns them: decoded where the index compresses them) and
// payloads, valid for the call only.
struct ScanPiece {
  std::span<const uint64_t> ids;
  std::span<const float> vectors;
  std::span<const std::span<const std::byte>> payloads;
};
using ScanVisitor = std::function<Status(const ScanPiece&)>;

// Several ops applied all or none, in order. A batch has upserts and
// removals only: a removal of an id that is not there (then) does nothing,
// where Remove() of one is NotFound; an empty batch logs nothing.
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
  // and the ids written and not yet merged; and the times searches held the
  // index (a chunk of their queries each: see search_hold_us).
  uint64_t ops_applied = 0, apply_holds = 0, merges = 0, merge_steps = 0, recent_writes = 0, search_holds = 0;
  // Removed vectors a graph index (HNSW) still holds, and its rebuilds
  // without them since Open (see compact_tombstone_ratio).
  uint64_t tombstones = 0, compactions = 0;
  // Since Open: the index's storage grown beside the writes and put in
  // place (see grow_storage_ahead_from).
  uint64_t storage_growths = 0;
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
  // Where searches run (index::VectorIndex::SearchedOn): "cpu", or a GPU
  // mirror's card, or why the mirror went back to the CPU.
  std::string searched_on;
  RecoveryStats recovery;
};

class DurableIndex {
 public:
  static Result<std::unique_ptr<DurableIndex>> Open(const DurableIndexOptions& opts);
  virtual ~DurableIndex() = default;

  virtual Status Insert(uint64_t id, std::span<const float> v, std::span<const std::byte> payload = {}) = 0;
  virtual Status Update(uint64_t id, std::span<const float> v, std::span<const std::byte> payload = {}) = 0;
  virtual Status Upsert(uint64_t id, std::span<const float> v, std::span<const std::byte> payload = {}) = 0;
  virtual Status Remove(uint64_t id) = 0;
  virtual Status Apply(const WriteBatch& batch) = 0;

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
  virtual void InsertAsync(uint64_t id, std::span<const float> v, std::span<const std::byte> payload,
                           WriteCallback done) = 0;
  virtual void UpdateAsync(uint64_t id, std::span<const float> v, std::span<const std::byte> payload,
                           WriteCallback done) = 0;
  virtual void UpsertAsync(uint64_t id, std::span<const float> v, std::span<const std::byte> payload,
                           WriteCallback done) = 0;
  virtual void RemoveAsync(uint64_t id, WriteCallback done) = 0;
  virtual void ApplyAsync(const WriteBatch& batch, WriteCallback done) = 0;
  std::future<Status> UpsertAsync(uint64_t id, std::span<const float> v, std::span<const std::byte> payload = {});
  std::future<Status> RemoveAsync(uint64_t id);
  std::future<Status> ApplyAsync(const WriteBatch& batch);

  // k nearest of each of the nq queries (nq x dim floats). `params` sets,
  // for this call, how hard an approximate index searches, and which ids it
  // may return (a filter, or a list of ids, that the recent writes and the
  // index's candidates pass alike); a knob left at 0, or no filter or list,
  // takes DurableIndexOptions::search's. A knob the index has no part for is
  // InvalidArgument, and so is a query with a NaN or infinite component.
  virtual Result<index::SearchResults> Search(std::span<const float> queries, size_t k,
                                              const index::SearchParams& params) const = 0;
  Result<index::SearchResults> Search(std::span<const float> queries, size_t k) const {
    return Search(queries, k, index::SearchParams{});
  }
  virtual Result<Entry> Get(uint64_t id) const = 0;
  virtual bool Contains(uint64_t id) const = 0;
  virtual size_t Size() const = 0;
  // Visits every entry the store holds at one point in log order, each
  // once, in pieces of at most `piece` entries, and returns that point's
  // LSN: how a caller lists the store, or copies it into a store of another
  // index description. Searches go on meanwhile, and so do writes, unseen;
  // the merges of the recent writes, and checkpoints, wait for the scan, so
  // writers wait once the recent writes reach their bound. `visit` must not
  // call the store (a write could wait for the scan); an error it returns
  // ends the scan and is returned.
  virtual Result<uint64_t> Scan(size_t piece, const ScanVisitor& visit) const = 0;

  // Trains an IVF/PQ index on `sample` (n x dim floats) and checkpoints the
  // trained empty index at once, so recovery never trains again. Only before
  // the first write; an index that needs no training refuses it, and so does
  // a sample with a NaN or infinite component (naming them). Writes are
  // refused until that checkpoint is durable; where it fails, the store stays
  // untrained and Train may be called again.
  virtual Status Train(std::span<const float> sample) = 0;
  // True while the index still needs Train() before it takes writes.
  virtual bool NeedsTraining() const = 0;

  // Writes a checkpoint of every op acknowledged before the call (and of
  // some placed meanwhile) and returns its LSN; where nothing was logged
  // since the newest checkpoint, that one already holds this state and its
  // LSN is returned with nothing written. Writers are not held meanwhile.
  virtual Result<uint64_t> Checkpoint() = 0;
  // Reads back every kept checkpoint and the log after the oldest, checking
  // every CRC, as a scrubber does: damage is found while the store still
  // holds every op in memory, not at the next Open, where the damaged copy
  // may be the one it needs. Damage found is repaired by a checkpoint at once:
  // a checkpoint that did not verify counts as no generation and is retired,
  // and so is one whose replay would reach damaged log records, which end up
  // below the new one, where Open passes over them. The store may then hold
  // one generation until the next checkpoint, which the automatic
  // checkpointer takes as soon as anything is logged after the repair.
  // Writes and searches go on; automatic checkpoints wait for the reads.
  virtual Result<ScrubReport> Scrub() = 0;
  // Writes into `dest` (a directory that is empty or not there yet, whose
  // parent is) a store that Open opens as this one was at the returned LSN:
  // every op acknowledged before the call, and some placed meanwhile. It is
  // a checkpoint (taken where ops were logged since the newest, which is
  // kept as one of the store's generations), copied with the pacing of a
  // checkpoint, its CRCs checked as it is read and the copy read back whole.
  // Where the store's own file no longer verifies, it is written anew and
  // copied once more. Writes and searches go on; automatic checkpoints
  // wait. The copy's leftovers are removed where it fails; until the copy is
  // named, `dest` holds no checkpoint (Open would make an empty store there).
  virtual Result<BackupInfo> Backup(const std::string& dest) = 0;
  virtual DurableIndexStats Stats() const = 0;
  virtual Status Close() = 0;

 protected:
  DurableIndex() = default;
  DurableIndex(const DurableIndex&) = delete;
  DurableIndex& operator=(const DurableIndex&) = delete;
};

}  // namespace vecwal::recovery
