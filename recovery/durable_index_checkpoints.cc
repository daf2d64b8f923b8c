// DurableIndexImpl's checkpoints: training, snapshots of the index at an
// LSN, their files and generations, the log they release, and the automatic
// checkpointer.
#include "recovery/durable_index_impl.h"

#include <algorithm>
#include <chrono>

#include "io/prefault.h"

namespace vecwal::recovery {

// Takes the automatic checkpoints on a thread of its own. On the thread of
// the write that crossed checkpoint_every_log_bytes, that write waited for
// the whole checkpoint (seconds, for HNSW) and returned its error although
// it was durable; on the applier thread, async ops' completions would wait.
// A failed one fails nothing: the log holds every write. It is reported in
// Stats and tried again after another interval of log, not at once: the
// cause (a full disk, a failing device) seldom passes in a moment. Once the
// log reaches the limit where writers wait (LogLimit), it is tried every
// second instead: the writers are refused until one succeeds.
void DurableIndexImpl::CheckpointerLoop() {
  static constexpr auto kRetryAtLimit = std::chrono::seconds(1);
  const uint64_t limit = LogLimit();
  std::unique_lock l(auto_mu_);
  for (;;) {
    // The wait's timeout covers a crossing missed while auto_due_at_ moved,
    // and the retry at the limit, which no write announces.
    const bool woken = auto_cv_.wait_for(l, std::chrono::milliseconds(200), [&] {
      if (stop_checkpointer_) return true;
      if (!failed().ok()) return false;
      const uint64_t bytes = log_bytes_since_checkpoint_.load();
      return bytes >= auto_due_at_.load() || (limit != 0 && bytes >= limit && Clock::now() >= auto_retry_at_);
    });
    if (!woken) continue;
    if (stop_checkpointer_) return;
    l.unlock();
    auto c = Checkpoint();
    l.lock();
    if (c.ok()) continue;
    auto_due_at_ = log_bytes_since_checkpoint_.load() + opts_.checkpoint_every_log_bytes;
    if (c.status().code() == Status::Code::kUnavailable) continue;  // closed meanwhile: no failure
    ++auto_checkpoint_failures_;
    last_auto_checkpoint_error_ = c.status();
    auto_checkpoints_failing_ = true;
    auto_retry_at_ = Clock::now() + kRetryAtLimit;
    room_cv_.notify_all();  // writers at the limit are refused now
  }
}

Status DurableIndexImpl::Train(std::span<const float> sample) {
  std::lock_guard c(ckpt_mu_);
  checkpoint_started_ = Clock::now();
  {
    std::lock_guard lk(write_mu_);
    if (!wal_) return Status::Unavailable(opts_.dir + " is closed");
    if (trained_.load())
      return Status::InvalidArgument("index '" + opts_.spec.description + "' is already trained");
  }
  // Trained with no lock but ckpt_mu_ (which keeps Close and another Train
  // out): Stats() and every write, refused or not, take write_mu_, and
  // training a big IVF takes minutes. A training whose checkpoint failed left
  // the index trained in memory only: this one starts again from an empty
  // index and its own sample.
  VECWAL_ASSIGN_OR_RETURN(auto fresh, index::NewFaissIndex(opts_.spec));
  VECWAL_RETURN_IF_ERROR(fresh->Train(sample));
  VECWAL_ASSIGN_OR_RETURN(fresh, Wrapped(std::move(fresh)));
  {
    // Writers check ids under write_mu_ alone, Contains under recent_mu_.
    std::lock_guard lk(write_mu_);
    std::unique_lock w(state_mu_);
    std::unique_lock rw(recent_mu_);
    index_ = std::move(fresh);
  }
  Snapshot snap;
  {
    std::unique_lock<std::mutex> m;
    VECWAL_ASSIGN_OR_RETURN(const uint64_t lsn, QuiesceIndex(m));
    VECWAL_ASSIGN_OR_RETURN(snap, CopyIndex(lsn, {}));
  }
  VECWAL_RETURN_IF_ERROR(Persist(std::move(snap)).status());
  // Writes are taken only from now on: a logged write replays only into a
  // trained index, so one acknowledged before this checkpoint was durable
  // would keep the store from opening after a crash.
  std::lock_guard lk(write_mu_);
  trained_ = true;
  return Status::OK();
}

bool DurableIndexImpl::NeedsTraining() const { return !trained_.load(); }

Result<uint64_t> DurableIndexImpl::Checkpoint() {
  std::lock_guard c(ckpt_mu_);
  return CheckpointLocked();
}

Result<uint64_t> DurableIndexImpl::CheckpointLocked() {
  checkpoint_started_ = Clock::now();
  // A compaction this checkpoint did not put in place ends with the index held.
  struct EndCompaction {
    WriterPriorityMutex& mu;
    std::unique_ptr<index::IndexCompaction>& c;
    ~EndCompaction() {
      if (c == nullptr) return;
      std::unique_lock w(mu);
      c.reset();
    }
  } end_compaction{state_mu_, compaction_};
  VECWAL_RETURN_IF_ERROR(RebuildWithoutTombstones());
  // Where the index can export itself, merges stop only while the id tables
  // are copied; the vectors are then written from the live index while
  // merges go on (copy on write for the rows they change). Elsewhere the
  // index is copied in memory first, before merges go on. Writers go on
  // throughout.
  std::unique_ptr<index::IndexExport> ex;
  uint64_t lsn = 0, live = 0;
  const Payloads* payloads = nullptr;
  std::optional<Snapshot> copy;
  {
    // Room for a copy, its pages faulted in before merges stop: faulting
    // hundreds of megabytes of fresh pages took longer than the copy itself.
    // Where the last checkpoint was a copy, this one will be too.
    std::vector<std::byte> room;
    if (last_snapshot_live_ != 0) {  // a size measured, not guessed: a PQ code is far less than a vector
      room.reserve(SnapshotBytesEstimate(Size()));
      (void)PrefaultForWrite(room.data(), room.capacity());
    }
    std::unique_lock<std::mutex> m;
    VECWAL_ASSIGN_OR_RETURN(lsn, QuiesceIndex(m));
    // Nothing logged since the newest checkpoint: writing it again would only
    // replace a file with its own bytes (and free the old file's blocks).
    if (checkpoint_on_disk_ && lsn == last_checkpoint_lsn_) {
      ForgetCheckpointedBytes();  // none of them past it
      return lsn;
    }
    {
      std::unique_lock w(state_mu_);
      VECWAL_ASSIGN_OR_RETURN(ex, index_->BeginExport());
      if (ex) {
        live = index_->size();
        payloads = &payloads_.Freeze();
      }
    }
    // Copied at the same LSN, merge_mu_ still held. Quiescing again (as a
    // copy once did) merged what writers sent meanwhile, which beside an
    // index slower than the writers (HNSW) never ended.
    if (!ex) {
      VECWAL_ASSIGN_OR_RETURN(copy, CopyIndex(lsn, std::move(room)));
    }
  }
  if (copy) return Persist(std::move(*copy));
  // Ends the export and thaws the payloads on every way out: with the index
  // held exclusively.
  struct EndExport {
    WriterPriorityMutex& mu;
    std::unique_ptr<index::IndexExport>& ex;
    PayloadStore& payloads;
    ~EndExport() {
      std::unique_lock w(mu);
      ex.reset();
      payloads.Thaw();
    }
  } end{state_mu_, ex, payloads_};
  // The export copies straight into the checkpoint's staging buffer, at most
  // one stage (kCheckpointStageBytes) a call: merges wait for one such copy.
  auto source = [&](std::span<std::byte> room) -> Result<size_t> {
    std::shared_lock r(state_mu_);
    return ex->Next(room);
  };
  VECWAL_RETURN_IF_ERROR(
      WriteCheckpoint(*fs_, opts_.dir, lsn, opts_.spec, live, source, *payloads, LogPacing()).status());
  return FinishCheckpoint(lsn);
}

// A graph index (HNSW) keeps removed vectors as tombstones until it is
// rebuilt without them, which takes as long as building it did: at 50k x
// 128-d HNSW32 on our 2-core VM, 100 s, for which a checkpoint that rebuilt
// with the index held stopped every writer and every search. The rebuild
// runs here instead, before the checkpoint holds the index: it copies the
// live vectors a few MB at a time with the index held shared (merges wait
// for one copy), and adds them to the new index holding nothing.
// QuiesceIndex puts it in place, adding what changed meanwhile.
Status DurableIndexImpl::RebuildWithoutTombstones() {
  if (!wal_) return Status::OK();  // closed: the checkpoint says so
  auto enough = [&](size_t dead, size_t live) {
    return dead > 0 && static_cast<double>(dead) >= opts_.compact_tombstone_ratio * static_cast<double>(dead + live);
  };
  // The recent writes' removes and rewrites of ids the index holds are
  // tombstones once merged. Where even with them there are too few, nothing
  // is merged here: beside writers faster than the index (HNSW's), merging
  // first took as long as the checkpoint's own merge.
  {
    std::shared_lock r(state_mu_);
    std::shared_lock rr(recent_mu_);
    size_t dead = index_->tombstones();
    for (uint64_t id : recent_->ids()) dead += index_->Contains(id);
    if (!enough(dead, index_->size())) return Status::OK();
  }
  MergeRecent();  // then counted exactly: the rebuild copies the index as merged
  {
    std::shared_lock r(state_mu_);
    if (!enough(index_->tombstones(), index_->size())) return Status::OK();
  }
  {
    std::unique_lock w(state_mu_);
    VECWAL_ASSIGN_OR_RETURN(compaction_, index_->BeginCompaction());
  }
  if (compaction_ == nullptr) return Status::OK();
  for (;;) {
    Result<bool> more = false;
    {
      std::shared_lock r(state_mu_);
      more = compaction_->CopyNext();
    }
    VECWAL_RETURN_IF_ERROR(more.status());
    if (!*more) return Status::OK();
    VECWAL_RETURN_IF_ERROR(compaction_->AddCopied());
  }
}

// Lets every op placed before the call apply and merge into the index, and
// puts a compaction built for this checkpoint in place. Returns holding
// merge_mu_ (in `m`) with no merge under way: the index then holds exactly
// the log up to the LSN returned, a checkpoint's LSN, that of the last op it
// merged. Writers are never held: ops placed meanwhile apply to the recent
// writes, which the checkpoint leaves out, and recovery replays them.
//
// It merges under one hold of merge_mu_: the set a merge is moving, then
// the recent writes, which hold the ops placed before the call. Releasing
// it between steps let the applier thread set aside a newer set, up to the
// bound, which the checkpoint then had to finish as well (16k HNSW vectors
// in a test, while its writer outran the index).
Result<uint64_t> DurableIndexImpl::QuiesceIndex(std::unique_lock<std::mutex>& m) {
  uint64_t placed = 0;
  {
    std::lock_guard lk(write_mu_);
    if (!wal_) return Status::Unavailable(opts_.dir + " is closed");
    placed = placed_seq_;
  }
  VECWAL_RETURN_IF_ERROR(DrainTo(placed));  // never persist a state that may have left its log
  // The log bytes of ops this checkpoint holds, about: those placed later
  // and applied meanwhile count toward the next one as well.
  checkpoint_counted_bytes_ = log_bytes_since_checkpoint_.load();
  uint64_t lsn = 0;  // of an op applied after those placed before the call
  {
    std::shared_lock r(recent_mu_);
    lsn = recent_last_lsn_;
  }
  m = std::unique_lock(merge_mu_);
  MergeThrough(lsn, m, true);
  VECWAL_RETURN_IF_ERROR(failed());
  if (compaction_ != nullptr) {
    std::unique_lock w(state_mu_);
    VECWAL_RETURN_IF_ERROR(index_->FinishCompaction(std::move(compaction_)));
    ++compactions_;
  }
  return std::max(index_lsn_.load(), last_checkpoint_lsn_.load());
}

void DurableIndexImpl::NoGenerationLocked(uint64_t lsn) {
  if (std::ranges::find(unverified_checkpoints_, lsn) == unverified_checkpoints_.end())
    unverified_checkpoints_.push_back(lsn);
}

// The last snapshot's bytes per vector, or a float vector and its ids before
// there is one; under ckpt_mu_.
uint64_t DurableIndexImpl::SnapshotBytesEstimate(uint64_t live) const {
  const uint64_t per_vector = last_snapshot_live_ ? last_snapshot_bytes_ / last_snapshot_live_ + 1
                                                  : uint64_t{opts_.spec.dim} * sizeof(float) + 32;
  return per_vector * (live + 1024) + (64 << 10);
}

// The index as QuiesceIndex leaves it, copied in FAISS's serialized form;
// merges wait for the copy, writers do not.
Result<DurableIndexImpl::Snapshot> DurableIndexImpl::CopyIndex(uint64_t lsn, std::vector<std::byte> room) {
  Snapshot snap;
  snap.lsn = lsn;
  snap.index_bytes = std::move(room);
  snap.index_bytes.clear();
  {
    std::shared_lock r(state_mu_);
    snap.live = index_->size();
    // Room for the bytes up front saves re-allocating, and copying, hundreds of
    // megabytes as they arrive (a no-op when the caller's room is enough).
    // With no snapshot of vectors before (the first after a Train) the size
    // is guessed, and a guess short by 1.5% (an IVF's ids) doubled a 625 MB
    // buffer as its last bytes came: 1.9 s. The bytes are counted first then.
    uint64_t want = SnapshotBytesEstimate(snap.live);
    if (last_snapshot_live_ == 0 && snap.live != 0) {
      want = 0;
      VECWAL_RETURN_IF_ERROR(index_->Serialize([&](std::span<const std::byte> b) {
        want += b.size();
        return Status::OK();
      }));
    }
    snap.index_bytes.reserve(want);
    VECWAL_RETURN_IF_ERROR(index_->Serialize([&](std::span<const std::byte> b) {
      snap.index_bytes.insert(snap.index_bytes.end(), b.begin(), b.end());
      return Status::OK();
    }));
  }
  {
    std::unique_lock w(state_mu_);  // readers look at whether payloads are frozen
    snap.payloads = &payloads_.Freeze();
  }
  last_snapshot_bytes_ = snap.index_bytes.size();
  last_snapshot_live_ = snap.live;
  return snap;
}

Result<uint64_t> DurableIndexImpl::Persist(Snapshot&& snap) {
  Status written =
      WriteCheckpoint(*fs_, opts_.dir, snap.lsn, opts_.spec, snap.live, snap.index_bytes, *snap.payloads, LogPacing())
          .status();
  {
    std::unique_lock w(state_mu_);
    payloads_.Thaw();
  }
  VECWAL_RETURN_IF_ERROR(written);
  return FinishCheckpoint(snap.lsn);
}

// The log is active while its durable LSN moved within the last 5 ms. "Moved
// since the last question" was too twitchy: one writer's appends leave gaps of
// a few hundred microseconds, and an answer that fell in one let a whole stage
// out at once.
CheckpointPacing DurableIndexImpl::LogPacing() const {
  static constexpr auto kQuietAfter = std::chrono::milliseconds(5);
  return {[this, last = wal_->durable_lsn(), moved = Clock::now()]() mutable {
    const uint64_t lsn = wal_->durable_lsn();
    const auto now = Clock::now();
    if (lsn != last) {
      last = lsn;
      moved = now;
    }
    return now - moved < kQuietAfter;
  }};
}

// Only a checkpoint takes bytes off (under ckpt_mu_), and only those it
// counted: the log written meanwhile is still after it. A checkpoint on disk,
// whoever took it, ends a run of failed automatic ones.
void DurableIndexImpl::ForgetCheckpointedBytes() {
  log_bytes_since_checkpoint_ -= checkpoint_counted_bytes_;
  checkpoint_counted_bytes_ = 0;
  {
    std::lock_guard l(auto_mu_);  // a writer at the limit waits, or sees the bytes before it waits
    auto_checkpoints_failing_ = false;
  }
  room_cv_.notify_all();
}

// The checkpoint at `lsn` is durable under its final name.
Result<uint64_t> DurableIndexImpl::FinishCheckpoint(uint64_t lsn) {
  last_checkpoint_lsn_ = lsn;
  checkpoint_on_disk_ = true;
  ForgetCheckpointedBytes();
  auto_due_at_ = opts_.checkpoint_every_log_bytes;
  ++checkpoints_;
  last_checkpoint_ns_ = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - checkpoint_started_).count());
  // Keep the newest generations that verify; the log is needed from the
  // oldest kept one. One that did not verify (the one just written at its LSN
  // anew aside) is retired: counted as kept, it would have retired the one
  // Open fell back to, and a second bad checkpoint left nothing to open.
  std::erase(unverified_checkpoints_, lsn);
  VECWAL_ASSIGN_OR_RETURN(auto lsns, ListCheckpoints(*fs_, opts_.dir));
  if (std::ranges::find(lsns, lsn) == lsns.end())  // before any is retired
    return Status::Corruption(opts_.dir + ": " + CheckpointFileName(lsn) + ", just written, is not listed");
  const size_t keep = std::max<size_t>(opts_.keep_checkpoints, 1);
  std::vector<uint64_t> kept;
  size_t damaged = 0;
  for (uint64_t l : lsns) {
    const bool unverified = std::ranges::find(unverified_checkpoints_, l) != unverified_checkpoints_.end();
    damaged += unverified;
    if (kept.size() == keep || unverified) VECWAL_RETURN_IF_ERROR(RetireCheckpoint(*fs_, opts_.dir, l));
    else kept.push_back(l);
  }
  unverified_checkpoints_.clear();
  VECWAL_RETURN_IF_ERROR(fs_->SyncDir(opts_.dir));
  VECWAL_RETURN_IF_ERROR(wal_->ReleaseBefore(kept.back() + 1).status());  // Close waits on ckpt_mu_
  // Damaged generations retired (a Scrub's repair) leave the store short of
  // `keep`, one bad file from nothing to open: the checkpointer takes the
  // next one as soon as anything is logged after this one, not a whole
  // interval of log later.
  if (damaged > 0 && kept.size() < keep && opts_.checkpoint_every_log_bytes != 0) auto_due_at_ = 1;
  // Until then a second copy of this one stands in for the generation missing.
  const bool copy = kept.size() < keep && (damaged > 0 || std::exchange(checkpoint_copy_wanted_, false));
  if (copy) VECWAL_RETURN_IF_ERROR(WriteCheckpointCopyLocked(lsn));
  if (kept.size() >= keep) {
    RemoveCheckpointCopiesLocked();
    checkpoint_copy_wanted_ = false;  // a Scrub's wish for a copy is moot once the generations are enough
  }
  return lsn;
}

Status DurableIndexImpl::WriteCheckpointCopyLocked(uint64_t lsn) {
  const std::string copies = opts_.dir + "/" + kCheckpointCopyDir;
  VECWAL_RETURN_IF_ERROR(fs_->CreateDir(copies));
  VECWAL_RETURN_IF_ERROR(fs_->SyncDir(opts_.dir));
  // Every other file goes: older copies, and a copy a crash left half written.
  const std::string name = CheckpointFileName(lsn);
  VECWAL_ASSIGN_OR_RETURN(const auto held, fs_->ListDir(copies));
  for (const auto& n : held)
    if (n != name) VECWAL_RETURN_IF_ERROR(fs_->Remove(copies + "/" + n));
  if (std::ranges::find(held, name) != held.end()) return Status::OK();  // Scrub reads it back
  auto copied = CopyCheckpoint(*fs_, opts_.dir + "/" + CheckpointFileName(lsn), copies, LogPacing());
  if (!copied.ok()) return copied.status().WithContext("second copy of checkpoint " + std::to_string(lsn));
  const std::string path = copies + "/" + name;
  auto v = VerifyCheckpoint(*fs_, path);
  const std::string problem = v.ok() ? v->problems() : v.status().ToString();
  if (problem.empty()) return Status::OK();
  (void)fs_->Remove(path);
  return Status::Corruption(path + " reads back other bytes than were written: " + problem);
}

void DurableIndexImpl::RemoveCheckpointCopiesLocked() {
  const std::string copies = opts_.dir + "/" + kCheckpointCopyDir;
  auto held = fs_->ListDir(copies);  // no directory: no copies
  if (!held.ok() || held->empty()) return;
  for (const auto& n : *held) (void)fs_->Remove(copies + "/" + n);
  (void)fs_->SyncDir(copies);
}

}  // namespace vecwal::recovery
