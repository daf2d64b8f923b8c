#include "recovery/durable_index_impl.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <semaphore>
#include <thread>

#include "io/prefault.h"
#include "io/time_slice.h"
#include "recovery/replay_window.h"

namespace vecwal::recovery {
namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string Describe(const index::IndexSpec& s) {
  return "dimension " + std::to_string(s.dim) + ", metric " + index::ToString(s.metric) + ", index '" +
         s.description + "'";
}

}  // namespace

struct DurableIndexImpl::AsyncWrite {
  wal::Op op;
  std::vector<std::byte> bytes;
  uint64_t seq = 0;
  WriteCallback done;
  std::atomic<bool> refused{false};  // the log refused it before placing it
};

void WriteBatch::Upsert(uint64_t id, std::span<const float> v, std::span<const std::byte> payload) {
  op_.ops.emplace_back(wal::UpsertOp{id, {v.begin(), v.end()}, {payload.begin(), payload.end()}});
}
void WriteBatch::Remove(uint64_t id) { op_.ops.emplace_back(wal::DeleteOp{id}); }

Result<std::unique_ptr<index::VectorIndex>> DurableIndexImpl::Wrapped(std::unique_ptr<index::VectorIndex> made) const {
  if (!opts_.wrap_index) return made;
  VECWAL_ASSIGN_OR_RETURN(auto wrapped, opts_.wrap_index(std::move(made)));
  if (wrapped == nullptr) return Status::InvalidArgument(opts_.dir + ": the options' wrap_index returned no index");
  return wrapped;
}

Result<std::unique_ptr<DurableIndex>> DurableIndex::Open(const DurableIndexOptions& opts) {
  return DurableIndexImpl::Open(opts);
}

Result<std::unique_ptr<DurableIndex>> DurableIndexImpl::Open(const DurableIndexOptions& opts) {
  if (opts.dir.empty()) return Status::InvalidArgument("DurableIndexOptions::dir is empty");
  std::unique_ptr<DurableIndexImpl> d(new DurableIndexImpl());
  d->opts_ = opts;
  d->auto_due_at_ = opts.checkpoint_every_log_bytes;
  d->fs_ = opts.wal.fs ? opts.wal.fs : NewPosixFileSystem();
  d->opts_.wal.fs = d->fs_;
  d->opts_.wal.recovery_mode = opts.recovery_mode;
  // Refused before a recovery that may take minutes: an empty index of the
  // description says which knobs it has (a bad description is left to
  // recovery, whose error names it).
  if (opts.search.nprobe != 0 || opts.search.ef_search != 0)
    if (auto probe = index::NewFaissIndex(opts.spec); probe.ok())
      VECWAL_RETURN_IF_ERROR((*probe)->CheckSearchParams(opts.search));
  VECWAL_RETURN_IF_ERROR(d->fs_->CreateDir(opts.dir));
  VECWAL_ASSIGN_OR_RETURN(d->lock_, d->fs_->LockDir(opts.dir, opts.wal.lock_wait_ms));
  d->recent_ = std::make_unique<RecentWrites>(opts.spec);
  VECWAL_RETURN_IF_ERROR(d->Recover(&d->recovery_));
  d->search_floor_ = d->index_->SearchBatchFloor();
  d->applier_ = std::thread([p = d.get()] { p->ApplierLoop(); });
  if (opts.checkpoint_every_log_bytes != 0) d->checkpointer_ = std::thread([p = d.get()] { p->CheckpointerLoop(); });
  return std::unique_ptr<DurableIndex>(std::move(d));
}

DurableIndexImpl::~DurableIndexImpl() { (void)Close(); }

Status DurableIndexImpl::Close() {
  {
    std::lock_guard l(auto_mu_);
    stop_checkpointer_ = true;
  }
  auto_cv_.notify_all();
  room_cv_.notify_all();  // writers at the log limit are refused
  if (checkpointer_.joinable()) checkpointer_.join();  // after the checkpoint it is writing, if any
  {
    std::lock_guard a(apply_mu_);
    stop_applier_ = true;
  }
  applied_cv_.notify_all();
  if (applier_.joinable()) applier_.join();
  Status drained, s;
  std::vector<std::pair<std::shared_ptr<AsyncWrite>, Status>> tell;
  {
    std::lock_guard c(ckpt_mu_);
    std::lock_guard lk(write_mu_);
    if (!wal_) return Status::OK();
    drained = DrainTo(placed_seq_);  // async ops placed before Close complete
    s = wal_->Close();
    wal_.reset();
    lock_.reset();
    std::lock_guard a(apply_mu_);
    tell.swap(completions_);
    // Whatever could not complete (a failed store) is told so.
    const Status why = !drained.ok() ? drained : Status::Unavailable(opts_.dir + " was closed");
    for (auto& [seq, w] : async_) tell.emplace_back(std::move(w), why);
    async_.clear();
    ready_.clear();
  }
  for (auto& [w, st] : tell) w->done(st);  // outside every lock: a callback may write (and be refused)
  return s.ok() ? drained : s;
}

Status DurableIndexImpl::Recover(RecoveryStats* st) {
  const auto t0 = Clock::now();
  // Newest checkpoint that verifies; an older one if it does not.
  VECWAL_ASSIGN_OR_RETURN(auto lsns, ListCheckpoints(*fs_, opts_.dir));
  std::optional<LoadedCheckpoint> ck;
  Status unreadable;  // the first checkpoint that failed for another reason than damage
  for (uint64_t l : lsns) {
    auto loaded = LoadCheckpoint(*fs_, opts_.dir + "/" + CheckpointFileName(l));
    if (loaded.ok()) {
      ck = std::move(loaded).value();
      break;
    }
    st->checkpoint_note += loaded.status().ToString() + "; ";
    unverified_checkpoints_.push_back(l);
    if (loaded.status().code() != Status::Code::kCorruption && unreadable.ok()) unreadable = loaded.status();
  }
  // The second copy a repair left (kCheckpointCopyDir), where no checkpoint
  // in DIR verifies: the log after it is kept, as after the one it copies.
  bool from_copy = false;
  if (!ck) {
    const std::string copies = opts_.dir + "/" + kCheckpointCopyDir;
    auto listed = ListCheckpoints(*fs_, copies);
    for (uint64_t l : listed.ok() ? *listed : std::vector<uint64_t>{}) {
      auto loaded = LoadCheckpoint(*fs_, copies + "/" + CheckpointFileName(l));
      if (loaded.ok()) {
        ck = std::move(loaded).value();
        from_copy = true;
        break;
      }
      st->checkpoint_note += loaded.status().ToString() + "; ";
    }
  }
  // Where no checkpoint verifies, salvage replays the whole log into an
  // empty index of the options' spec, if the log still holds every op up to
  // the newest one's LSN (checked once it is read). A store that has not
  // reached its first automatic checkpoint holds all its ops in the log,
  // beside the small checkpoint at LSN 0 whose damage alone kept it shut.
  const bool from_log_alone = !ck && !lsns.empty() && opts_.recovery_mode == wal::RecoveryMode::kSalvage;
  if (!ck && !lsns.empty() && !from_log_alone) {
    // Said as corruption only where every one was damaged: a read that
    // failed (EIO, EMFILE) may well succeed on the next Open.
    const std::string why = opts_.dir + ": no checkpoint verifies: " + st->checkpoint_note;
    return unreadable.ok() ? Status::Corruption(why) : Status::IOError(why, unreadable.sys_errno());
  }
  if (from_log_alone) st->checkpoint_note += "salvage: the whole log replayed into an empty index of the options' spec";
  if (ck && !st->checkpoint_note.empty())
    st->checkpoint_note += "recovered from " + (from_copy ? std::string(kCheckpointCopyDir) + "/" : std::string()) +
                           CheckpointFileName(ck->info.lsn);
  if (ck) {
    const auto& have = ck->info.spec;
    if (have.dim != opts_.spec.dim || have.metric != opts_.spec.metric || have.description != opts_.spec.description)
      return Status::InvalidArgument(opts_.dir + " holds " + Describe(have) + "; opened with " + Describe(opts_.spec) +
                                     (have.dim == opts_.spec.dim ? " (recovery::Reindex, or vecwal-reindex, copies a "
                                                                   "store into one of another index)"
                                                                 : ""));
    VECWAL_ASSIGN_OR_RETURN(index_, Wrapped(std::move(ck->index)));
    payloads_.Reset(std::move(ck->payloads));
    last_checkpoint_lsn_ = ck->info.lsn;
    checkpoint_on_disk_ = !from_copy;  // DIR's own file at that LSN did not verify: written anew
  } else {
    VECWAL_ASSIGN_OR_RETURN(auto fresh, index::NewFaissIndex(opts_.spec));
    VECWAL_ASSIGN_OR_RETURN(index_, Wrapped(std::move(fresh)));
    if (from_log_alone && !index_->is_trained())
      return Status::Corruption(opts_.dir + ": no checkpoint verifies, and index '" + opts_.spec.description +
                                "' needs training, which only a checkpoint holds: " + st->checkpoint_note);
  }
  st->checkpoint_lsn = last_checkpoint_lsn_;
  st->checkpoint_load_s = Since(t0);

  // Replay the log after the checkpoint, in windows applied as batches, into
  // storage sized for at most every log byte being a new vector.
  const auto t1 = Clock::now();
  {
    uint64_t log_bytes = 0;
    auto files = fs_->ListDir(opts_.dir + "/wal");
    if (files.ok())
      for (const auto& n : *files)
        if (wal::ParseSegmentFileName(n)) log_bytes += opts_.wal.segment_bytes;
    const uint64_t per_vector = wal::RecordFootprint(16 + uint64_t{opts_.spec.dim} * sizeof(float));
    index_->Reserve(index_->size() + log_bytes / per_vector);
  }
  ReplayWindow window(*index_, payloads_);
  double apply_s = 0, decode_s = 0;
  opts_.wal.min_next_lsn = last_checkpoint_lsn_ + 1;
  std::vector<wal::OpView> ops;
  auto visit = [&](const wal::LogRecord& r) -> Status {
    const auto td = Clock::now();
    ops.clear();
    Status decoded = wal::DecodeOpViews(r.type, r.payload, r.lsn, ops);
    decode_s += Since(td);
    if (!decoded.ok()) return decoded.WithContext(opts_.dir + "/wal segment " + std::to_string(r.segment_id));
    ++st->records_replayed;
    st->bytes_replayed += r.payload.size();
    const auto ta = Clock::now();
    Status s = window.Apply(ops, r.lsn, r.keep);
    apply_s += Since(ta);
    return s;
  };
  VECWAL_ASSIGN_OR_RETURN(wal_, wal::Wal::Open(opts_.dir + "/wal", opts_.wal, visit, last_checkpoint_lsn_ + 1));
  const auto& rep = wal_->open_report();
  if (from_log_alone && (rep.first_lsn > 1 || wal_->durable_lsn() < lsns.front()))
    return Status::Corruption(opts_.dir + ": no checkpoint verifies, and the log (LSNs " + std::to_string(rep.first_lsn) +
                              " to " + std::to_string(wal_->durable_lsn()) + ") does not hold every op up to LSN " +
                              std::to_string(lsns.front()) + ", which " + CheckpointFileName(lsns.front()) +
                              " held: " + st->checkpoint_note);
  if (rep.records_visited > 0 && rep.first_lsn > last_checkpoint_lsn_ + 1)
    return Status::Corruption(opts_.dir + ": the checkpoint ends at LSN " + std::to_string(last_checkpoint_lsn_) +
                              " but the log starts at LSN " + std::to_string(rep.first_lsn));
  st->tail_note = rep.tail_note;
  if (!rep.seal_note.empty()) st->tail_note += (st->tail_note.empty() ? "" : "; ") + rep.seal_note;
  st->log_bytes_read = rep.bytes_read;
  st->dropped = rep.dropped;
  st->skipped = rep.skipped;
  const auto t2 = Clock::now();
  VECWAL_RETURN_IF_ERROR(window.Flush());
  index_lsn_ = recent_last_lsn_ = std::max(last_checkpoint_lsn_.load(), wal_->durable_lsn());  // every record replayed
  trained_ = index_->is_trained();
  st->apply_s = apply_s + Since(t2);
  st->apply_busy_s = window.apply_busy_s();
  st->decode_s = decode_s;
  st->log_read_s = Since(t1) - st->apply_s - decode_s;
  st->total_s = Since(t0);
  // The replayed tail counts toward the next automatic checkpoint: a store
  // that crashes again replays at most a checkpoint interval more.
  log_bytes_since_checkpoint_ = st->bytes_replayed + st->records_replayed * wal::kRecordHeaderSize;

  // A new store records its spec at once; salvage checkpoints past the holes,
  // even at the loaded checkpoint's LSN.
  if (!rep.dropped.empty()) checkpoint_on_disk_ = false;
  if (!ck || !rep.dropped.empty()) VECWAL_RETURN_IF_ERROR(Checkpoint().status());
  // A fallback left one generation fewer: the checkpointer writes a new one
  // at once, beside the first writes and searches rather than before them.
  else if (!unverified_checkpoints_.empty())
    auto_due_at_ = 0;
  return Status::OK();
}

Status DurableIndexImpl::Validate(uint64_t id, std::span<const float> v, std::span<const std::byte> payload) const {
  if (v.size() != opts_.spec.dim)
    return Status::InvalidArgument("id " + std::to_string(id) + ": vector of dimension " + std::to_string(v.size()) +
                                   ", the index has " + std::to_string(opts_.spec.dim));
  VECWAL_RETURN_IF_ERROR(index::CheckFinite(v, opts_.spec.dim, [id](size_t) { return "id " + std::to_string(id); }));
  if (payload.size() > opts_.max_payload_bytes)
    return Status::InvalidArgument("id " + std::to_string(id) + ": payload of " + std::to_string(payload.size()) +
                                   " bytes exceeds the cap of " + std::to_string(opts_.max_payload_bytes));
  if (id == index::kNoId) return Status::InvalidArgument("id " + std::to_string(id) + " is reserved");
  return Status::OK();
}

Status DurableIndexImpl::failed() const {
  std::lock_guard lk(fail_mu_);
  return failed_;
}

void DurableIndexImpl::SetFailedNoNotify(const Status& s) {
  std::lock_guard lk(fail_mu_);
  if (failed_.ok()) failed_ = s;
}

void DurableIndexImpl::SetFailed(const Status& s) {
  SetFailedNoNotify(s);
  std::lock_guard a(apply_mu_);
  applied_cv_.notify_all();
}

bool DurableIndexImpl::PresentLocked(uint64_t id) {
  if (auto it = overlay_.find(id); it != overlay_.end()) {
    if (it->second.second > applied_seq_.load()) return it->second.first;
    overlay_.erase(it);  // applied since: the index knows
  }
  return Contains(id);  // which takes no state_mu_: this holds write_mu_
}

void DurableIndexImpl::NoteOverlay(const wal::Op& op, uint64_t seq) {
  if (auto* u = std::get_if<wal::UpsertOp>(&op)) overlay_[u->id] = {true, seq};
  else if (auto* d = std::get_if<wal::DeleteOp>(&op)) overlay_[d->id] = {false, seq};
  else if (auto* b = std::get_if<wal::BatchOp>(&op))
    for (const auto& sub : b->ops) {
      if (auto* su = std::get_if<wal::UpsertOp>(&sub)) overlay_[su->id] = {true, seq};
      else overlay_[std::get<wal::DeleteOp>(sub).id] = {false, seq};
    }
}

// Applies every op that is next in order and durable, whoever placed it.
// One writer at a time is the applier: it takes the run of consecutive ready
// ops and applies them to the recent writes under one exclusive hold,
// waiting for that hold without apply_mu_, so that the ops of writers
// arriving meanwhile join the next run. The run also takes the ops that
// turned ready while it waited (apply_mu_ under recent_mu_, the one place
// the two nest).
//
// The hold waits only for searches scanning the recent writes, never for a
// query of the index: the applier thread merges them into the index once
// they reach recent_writes_merge_at. A run that leaves four times that
// unmerged (a big batch, or an index slower than the writers) has its
// applier take merge steps until they are under it, so they stay small.
void DurableIndexImpl::ApplyReady(std::unique_lock<std::mutex>& a) {
  if (applying_) return;  // the applier's next run takes ours
  applying_ = true;
  std::vector<const wal::Op*> run;
  std::vector<std::shared_ptr<AsyncWrite>> finished;
  uint64_t next = 0, last_lsn = 0;
  // Under apply_mu_: moves the ready ops from `next` on into the run.
  auto take = [&] {
    for (auto it = ready_.begin(); it != ready_.end() && it->first == next && failed().ok(); ++next) {
      run.push_back(it->second.op);
      last_lsn = it->second.lsn;
      if (auto as = async_.find(next); as != async_.end()) {
        finished.push_back(std::move(as->second));
        async_.erase(as);
      }
      it = ready_.erase(it);
    }
  };
  for (;;) {
    run.clear();
    finished.clear();
    next = applied_seq_.load() + 1;
    take();
    if (run.empty()) break;
    a.unlock();
    {
      std::unique_lock r(recent_mu_);
      a.lock();
      take();
      a.unlock();
      for (const wal::Op* op : run) recent_->Apply(*op);
      recent_size_ = recent_->size();
      recent_last_lsn_ = last_lsn;
    }
    // Merged at once where they go straight into the index. Past the bound
    // (a big batch, or an index slower than the writers), this writer helps.
    bool helped = false;
    if (opts_.recent_writes_merge_at == 0) {
      MergeRecent();
    } else if (recent_size_.load() + merge_left_.load() >= RecentHardBound()) {
      MergeToBound();
      helped = true;
    }
    ops_applied_ += run.size();
    ++apply_holds_;
    a.lock();
    // The applier thread also ends a merge that this writer left part done.
    if (opts_.recent_writes_merge_at != 0 &&
        (recent_size_.load() >= opts_.recent_writes_merge_at || (helped && merge_left_.load() > 0)))
      merge_wanted_ = true;
    // Visible now. The applier thread runs the callbacks, in order: here a
    // checkpoint may hold write_mu_, which a callback's own write would need.
    for (auto& f : finished) completions_.emplace_back(std::move(f), failed());
    applied_seq_.fetch_add(run.size());
    applied_cv_.notify_all();
  }
  applying_ = false;
  if (!failed().ok() || merge_wanted_) applied_cv_.notify_all();
}

// Sets the recent writes aside (writers go on into a new set, whose entries
// hide theirs) and moves them into the index in steps, each under state_mu_
// and recent_mu_: one Remove of every id written, with their payloads, then
// gather adds sized to hold for about merge_hold_us, from the time the last
// step took per row. Searches and applies go on between the steps; until the
// last, the set aside hides every id it has, so what the index holds of them
// so far is never seen. Returns once what was applied before the call is in
// the index (or the store failed).
//
// The steps are MergeStepLocked's, and whoever holds merge_mu_ takes the next
// one: this loop, or a writer waiting at the bound (MergeToBound).
void DurableIndexImpl::MergeRecent() {
  uint64_t lsn = 0;
  {
    std::shared_lock r(recent_mu_);
    lsn = recent_last_lsn_;
  }
  std::unique_lock m(merge_mu_);
  MergeThrough(lsn, m, false);
}

// Until the index holds the op at `lsn`, and no set is part merged; with
// `m` (merge_mu_) held, released between steps unless `hold`. A step returns
// false only on failure, or with nothing set aside or recent: the index then
// holds every op applied.
void DurableIndexImpl::MergeThrough(uint64_t lsn, std::unique_lock<std::mutex>& m, bool hold) {
  std::chrono::nanoseconds pause{};
  while ((merging_ != nullptr || index_lsn_.load() < lsn) && MergeStepLocked(&pause)) {
    if (!hold) m.unlock();
    // Where the index adds slower than writes come (HNSW here), merges run
    // back to back, and a search that waits for one step finds the next one
    // queued as soon as it is done: two searchers of 20k x 128-d HNSW beside
    // four writers ran 338 queries/s, against 5053 with merges at once. So a
    // step that someone waited for is followed by as long again without
    // one: reads and applies keep at least half the time.
    if (pause.count() > 0) std::this_thread::sleep_for(pause);
    if (!hold) m.lock();
  }
}

// A step twice as long follows one that nobody waited for. FAISS adds to
// HNSW in parallel only over many vectors (here 2.2 ms a 128-d vector in
// batches of 1000, 4 ms in batches of 100 or fewer), so steps of a few
// vectors each made a bulk load through batches about 1.7x slower; with no
// search about, a merge's steps now grow to most of it. A search that comes
// waits for the step in progress, which is at most about as long as the
// merge has run unwatched. A failure leaves the set aside (reads stay right)
// and fails the store, which then takes no more writes rather than diverge
// from its log. Returns false where there was nothing to do.
//
// Beside searches of a big Flat index every hold first waits for the query
// in progress (a tenth of a second at 100k x 768-d here), so a merge takes
// as few holds as it can: its first removes and takes its first adds too,
// its last one ends it, and each step's room is made before it, with the
// index held shared (VectorIndex::PrepareRoom): with the page faults out of
// the hold, a step of 5 ms adds several times the rows. Batches of 1024
// beside one such searcher: see BENCHMARKS.md, twentieth session.
bool DurableIndexImpl::MergeStepLocked(std::chrono::nanoseconds* pause) {
  *pause = {};
  if (!failed().ok()) return false;
  MergeCursor& c = cursor_;
  const bool begins = merging_ == nullptr;
  if (begins) {
    std::unique_lock r(recent_mu_);
    if (recent_->empty()) return false;
    if (spare_recent_ == nullptr) spare_recent_ = std::make_unique<RecentWrites>(opts_.spec);
    merging_ = std::exchange(recent_, std::move(spare_recent_));
    merging_last_lsn_ = recent_last_lsn_;
    merge_left_ = merging_->size();  // with recent_size_, what writers are held to
    recent_size_ = 0;
    c = MergeCursor{};
  }
  const uint64_t hold_ns = opts_.merge_hold_us * 1000;
  const size_t timed = hold_ns == 0               ? std::numeric_limits<size_t>::max() >> 20  // all at once
                       : merge_ns_per_row_ == 0 ? 64
                                                : std::max<uint64_t>(1, hold_ns / merge_ns_per_row_);
  const size_t planned = timed << std::min<size_t>(c.unwatched, 20);
  // The step's room, made beside searches; a set about to begin has at most
  // as many rows as ids.
  std::unique_ptr<index::IndexRoom> room;
  {
    std::shared_lock w(state_mu_);
    room = index_->PrepareRoom(std::min(planned, begins ? merging_->size() : c.added.size() - c.at));
  }
  size_t n = 0;
  std::chrono::nanoseconds took{};
  bool waited = false;  // a search or an apply waited for this step
  std::unique_ptr<RecentWrites> merged;  // the set, once this step finishes it
  Status s;
  {
    std::unique_lock w(state_mu_);
    std::unique_lock r(recent_mu_);
    if (room != nullptr) index_->TakeRoom(*room);
    if (begins) {
      s = index_->Remove(merging_->ids());
      merging_->ForEach([&](uint64_t id, const float* v, std::span<const std::byte> payload) {
        if (v == nullptr) return payloads_.Erase(id);
        c.added.push_back(id);
        c.rows.push_back(reinterpret_cast<const std::byte*>(v));
        payloads_.Set(id, payload);
      });
    }
    if (s.ok() && c.at < c.added.size()) {
      n = std::min(planned, c.added.size() - c.at);
      const auto t0 = Clock::now();
      s = index_->AddRows(std::span(c.added).subspan(c.at, n), std::span(c.rows).subspan(c.at, n));
      took = Clock::now() - t0;
      // A merge's last, short step says little of the rate, nor does a grown
      // one: many rows cost less each than a few (HNSW adds them in
      // parallel). Unless it held too long: then the rate was slower than
      // thought (a set smaller than a step, its graph grown since the last
      // timed step). One quick step at most doubles the next (HNSW's rate
      // here varies twofold from step to step, and sometimes fourfold).
      if (n == timed || static_cast<uint64_t>(took.count()) > hold_ns)
        merge_ns_per_row_ = std::max<uint64_t>({1, static_cast<uint64_t>(took.count()) / n, merge_ns_per_row_ / 2});
    }
    if (s.ok() && c.at + n == c.added.size()) {  // the set is in the index: done, in this hold
      merged = std::move(merging_);
      index_lsn_ = merging_last_lsn_;
      ++merges_;
    }
    waited = state_mu_.has_waiters() || recent_mu_.has_waiters();
    c.unwatched = waited || bound_waiters_.load() > 0 ? 0 : c.unwatched + 1;
  }
  room.reset();  // a taken room holds the old storage: freed here, not in the hold
  if (s.ok()) c.at += n;
  merge_left_ = c.added.size() - c.at;
  if (!s.ok()) {
    SetFailed(s.WithContext("merging the recent writes into the index"));
    NoteMergeStep();
    return false;
  }
  if (merged != nullptr) {
    merged->Clear(RecentHardBound());  // its memory, for the next set
    spare_recent_ = std::move(merged);
  } else if (waited) {
    *pause = took;
  }
  if (n > 0) NoteMergeStep();  // once the rows it added are off merge_left_
  return true;
}

// A writer whose apply left the unmerged writes at the bound takes merge
// steps itself until they are under it. Writers so go no faster than the
// index takes vectors, and each waits about a step, not a whole merge: where
// it merged every one at once, a writer behind an HNSW merge of 4096 waited
// 7 s (20k x 128-d, 4 writers, this VM).
//
// Where another merge holds merge_mu_, the writer waits for one of its steps
// instead: a checkpoint holds it for the whole of its merge, which beside
// four writers on HNSW (20k x 128-d) kept them waiting 19 s.
void DurableIndexImpl::MergeToBound() {
  auto at_bound = [&] { return recent_size_.load() + merge_left_.load() >= RecentHardBound() && failed().ok(); };
  bound_waiters_.fetch_add(1);
  while (at_bound()) {
    std::unique_lock m(merge_mu_, std::try_to_lock);
    if (m.owns_lock()) {
      std::chrono::nanoseconds pause{};
      if (!MergeStepLocked(&pause)) break;
      continue;
    }
    std::unique_lock l(step_mu_);
    const uint64_t seen = merge_steps_.load();
    // The timeout covers a merge_mu_ released with no step after it.
    step_cv_.wait_for(l, std::chrono::milliseconds(5), [&] { return merge_steps_.load() != seen || !at_bound(); });
  }
  bound_waiters_.fetch_sub(1);
}

void DurableIndexImpl::NoteMergeStep() {
  {
    std::lock_guard l(step_mu_);
    ++merge_steps_;
  }
  step_cv_.notify_all();
}

Status DurableIndexImpl::DrainTo(uint64_t seq) {
  std::unique_lock a(apply_mu_);
  // Applies what is ready itself: the applier thread may be the one waiting here.
  for (;;) {
    ApplyReady(a);
    if (applied_seq_.load() >= seq || !failed().ok()) break;
    applied_cv_.wait(a);
  }
  return failed();
}

Status DurableIndexImpl::Write(const wal::Op& op, uint64_t id, Need need) {
  // Once per thread. A hint: where the kernel refuses it, the default stays.
  thread_local bool slice_asked = false;
  if (!slice_asked && opts_.writer_slice_us != 0) {
    (void)RequestTimeSlice(opts_.writer_slice_us);
    slice_asked = true;
  }
  VECWAL_RETURN_IF_ERROR(WaitForLogRoom());
  std::vector<std::byte> bytes;
  wal::EncodeOp(op, bytes);
  std::binary_semaphore done{0};
  Status st;
  uint64_t lsn = 0, seq = 0;
  auto on_durable = [&](const Status& s, uint64_t l) {
    st = s;
    lsn = l;
    done.release();
  };
  {
    std::lock_guard lk(write_mu_);
    VECWAL_RETURN_IF_ERROR(failed());
    if (!wal_) return Status::Unavailable(opts_.dir + " is closed");
    if (!trained_.load())
      return Status::InvalidArgument("index '" + opts_.spec.description + "' needs training before writes");
    VECWAL_RETURN_IF_ERROR(CheckNeedLocked(id, need));
    wal_->AppendAsync(wal::TypeOf(op), bytes, on_durable);
    // A record the log refused at once (lsn 0) was never placed.
    if (done.try_acquire()) {
      if (lsn == 0) {
        if (!wal_->status().ok()) SetFailed(st);
        return st;
      }
      done.release();  // durable already; taken again below
    }
    seq = ++placed_seq_;
    NoteOverlay(op, seq);
  }
  done.acquire();
  if (!st.ok()) {
    SetFailed(st);  // every later op fails too: the log is failed
    return st;
  }
  {
    std::unique_lock a(apply_mu_);
    ready_.emplace(seq, ReadyOp{&op, lsn});
    ApplyReady(a);
    applied_cv_.wait(a, [&] { return applied_seq_.load() >= seq || !failed().ok(); });
    if (applied_seq_.load() < seq) return failed();
  }
  VECWAL_RETURN_IF_ERROR(failed());
  NoteLogged(bytes.size() + wal::kRecordHeaderSize);
  return Status::OK();
}

void DurableIndexImpl::NoteLogged(uint64_t n) {
  const uint64_t after = log_bytes_since_checkpoint_.fetch_add(n) + n;
  const uint64_t due = auto_due_at_.load();
  if (opts_.checkpoint_every_log_bytes == 0 || after < due || after - n >= due) return;  // the crossing write only
  { std::lock_guard l(auto_mu_); }  // the checkpointer is waiting, or sees the bytes before it waits
  auto_cv_.notify_one();
}

uint64_t DurableIndexImpl::LogLimit() const {
  uint64_t limit = 0;
  if (__builtin_mul_overflow(opts_.checkpoint_every_log_bytes, opts_.stall_writes_at_intervals, &limit))
    return ~0ull;
  return limit;
}

// Past the log limit, waits until a checkpoint takes the log below it. A
// writer that finds the automatic checkpoints failing is refused instead:
// with the writers held, the log would never reach the next try's due, and
// a writer waiting out a full disk would look hung.
Status DurableIndexImpl::WaitForLogRoom() {
  const uint64_t limit = LogLimit();
  if (limit == 0 || log_bytes_since_checkpoint_.load() < limit) return Status::OK();
  const auto t0 = Clock::now();
  bool waited = false;
  Status s;
  {
    std::unique_lock l(auto_mu_);
    for (;;) {
      const uint64_t bytes = log_bytes_since_checkpoint_.load();
      if (bytes < limit) break;
      if (stop_checkpointer_) {
        s = Status::Unavailable(opts_.dir + " was closed");
        break;
      }
      if (s = failed(); !s.ok()) break;
      if (auto_checkpoints_failing_) {
        s = last_auto_checkpoint_error_.WithContext(
            "write refused: " + opts_.dir + " holds " + std::to_string(bytes) +
            " log bytes since its last checkpoint, at the limit of " + std::to_string(limit) +
            " (stall_writes_at_intervals x checkpoint_every_log_bytes), and its automatic checkpoints fail");
        break;
      }
      if (!waited) ++writes_waiting_;
      waited = true;
      // The timeout covers a store that failed meanwhile, which wakes nobody here.
      room_cv_.wait_for(l, std::chrono::milliseconds(100));
    }
  }
  if (waited) {
    --writes_waiting_;
    ++stalled_writes_;
    write_stall_ns_ += static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
  }
  return s;
}

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

Status DurableIndexImpl::CheckNeedLocked(uint64_t id, Need need) {
  if (need == Need::kAny) return Status::OK();
  const bool present = PresentLocked(id);
  if (need == Need::kAbsent && present) return Status::InvalidArgument("id " + std::to_string(id) + " already exists");
  if (need == Need::kPresent && !present) return Status::NotFound("id " + std::to_string(id) + " does not exist");
  return Status::OK();
}

void DurableIndexImpl::WriteAsync(wal::Op op, uint64_t id, Need need, WriteCallback done) {
  if (Status room = WaitForLogRoom(); !room.ok()) return done(room);
  auto w = std::make_shared<AsyncWrite>();
  w->op = std::move(op);
  w->done = std::move(done);
  wal::EncodeOp(w->op, w->bytes);
  Status refused;
  {
    std::lock_guard lk(write_mu_);
    refused = failed();
    if (refused.ok() && !wal_) refused = Status::Unavailable(opts_.dir + " is closed");
    if (refused.ok() && !trained_.load())
      refused = Status::InvalidArgument("index '" + opts_.spec.description + "' needs training before writes");
    if (refused.ok()) refused = CheckNeedLocked(id, need);
    if (refused.ok()) {
      // The seq is set before the log can call back: a durable completion
      // may arrive before AppendAsync returns.
      w->seq = placed_seq_ + 1;
      wal_->AppendAsync(wal::TypeOf(w->op), w->bytes,
                        [this, w](const Status& s, uint64_t lsn) { OnAsyncDurable(w, s, lsn); });
      if (w->refused.load()) return;  // its callback has told the caller
      ++placed_seq_;
      NoteOverlay(w->op, w->seq);
      return;
    }
  }
  w->done(refused);
}

// On the log's thread: queue the durable op for the applier.
void DurableIndexImpl::OnAsyncDurable(const std::shared_ptr<AsyncWrite>& w, const Status& s, uint64_t lsn) {
  if (!s.ok()) {
    if (lsn == 0) w->refused = true;  // never placed
    // A record the log refuses for its size leaves the log healthy; any
    // other failure is the log's, and so the store's.
    if (s.code() != Status::Code::kInvalidArgument) SetFailed(s);
    w->done(s);
    return;
  }
  NoteLogged(w->bytes.size() + wal::kRecordHeaderSize);
  {
    std::lock_guard a(apply_mu_);
    ready_.emplace(w->seq, ReadyOp{&w->op, lsn});
    async_.emplace(w->seq, w);
  }
  applied_cv_.notify_all();
}

// Applies async ops when no blocking writer is there to, fails them when the
// store has failed, and merges the recent writes when they reach the bound.
void DurableIndexImpl::ApplierLoop() {
  // A hint: where the kernel refuses it, the default stays.
  if (opts_.writer_slice_us != 0) (void)RequestTimeSlice(opts_.writer_slice_us);
  std::unique_lock a(apply_mu_);
  for (;;) {
    applied_cv_.wait(a, [&] {
      return stop_applier_ || !completions_.empty() || (!async_.empty() && !failed().ok()) || merge_wanted_ ||
             (failed().ok() && !ready_.empty() && ready_.begin()->first == applied_seq_.load() + 1 && !applying_);
    });
    if (stop_applier_) return;  // Close runs what is left
    if (!completions_.empty() || !failed().ok()) {
      std::vector<std::pair<std::shared_ptr<AsyncWrite>, Status>> tell;
      tell.swap(completions_);
      if (!failed().ok()) {
        for (auto& [seq, w] : async_) tell.emplace_back(std::move(w), failed());
        async_.clear();
      }
      a.unlock();
      for (auto& [w, st] : tell) w->done(st);
      a.lock();
      continue;
    }
    if (merge_wanted_) {
      merge_wanted_ = false;
      a.unlock();
      MergeRecent();
      a.lock();
      continue;
    }
    ApplyReady(a);
  }
}

Status DurableIndexImpl::Insert(uint64_t id, std::span<const float> v, std::span<const std::byte> payload) {
  VECWAL_RETURN_IF_ERROR(Validate(id, v, payload));
  return Write(wal::UpsertOp{id, {v.begin(), v.end()}, {payload.begin(), payload.end()}}, id, Need::kAbsent);
}
Status DurableIndexImpl::Update(uint64_t id, std::span<const float> v, std::span<const std::byte> payload) {
  VECWAL_RETURN_IF_ERROR(Validate(id, v, payload));
  return Write(wal::UpsertOp{id, {v.begin(), v.end()}, {payload.begin(), payload.end()}}, id, Need::kPresent);
}
Status DurableIndexImpl::Upsert(uint64_t id, std::span<const float> v, std::span<const std::byte> payload) {
  VECWAL_RETURN_IF_ERROR(Validate(id, v, payload));
  return Write(wal::UpsertOp{id, {v.begin(), v.end()}, {payload.begin(), payload.end()}}, id, Need::kAny);
}
Status DurableIndexImpl::Remove(uint64_t id) { return Write(wal::DeleteOp{id}, id, Need::kPresent); }

void DurableIndexImpl::InsertAsync(uint64_t id, std::span<const float> v, std::span<const std::byte> payload,
                                   WriteCallback done) {
  if (Status s = Validate(id, v, payload); !s.ok()) return done(s);
  WriteAsync(wal::UpsertOp{id, {v.begin(), v.end()}, {payload.begin(), payload.end()}}, id, Need::kAbsent,
             std::move(done));
}
void DurableIndexImpl::UpdateAsync(uint64_t id, std::span<const float> v, std::span<const std::byte> payload,
                                   WriteCallback done) {
  if (Status s = Validate(id, v, payload); !s.ok()) return done(s);
  WriteAsync(wal::UpsertOp{id, {v.begin(), v.end()}, {payload.begin(), payload.end()}}, id, Need::kPresent,
             std::move(done));
}
void DurableIndexImpl::UpsertAsync(uint64_t id, std::span<const float> v, std::span<const std::byte> payload,
                                   WriteCallback done) {
  if (Status s = Validate(id, v, payload); !s.ok()) return done(s);
  WriteAsync(wal::UpsertOp{id, {v.begin(), v.end()}, {payload.begin(), payload.end()}}, id, Need::kAny,
             std::move(done));
}
void DurableIndexImpl::RemoveAsync(uint64_t id, WriteCallback done) {
  WriteAsync(wal::DeleteOp{id}, id, Need::kPresent, std::move(done));
}
void DurableIndexImpl::ApplyAsync(const WriteBatch& batch, WriteCallback done) {
  for (const auto& sub : batch.op().ops)
    if (auto* u = std::get_if<wal::UpsertOp>(&sub))
      if (Status s = Validate(u->id, u->vector, u->payload); !s.ok()) return done(s);
  if (batch.size() == 0) return done(Status::OK());
  WriteAsync(batch.op(), 0, Need::kAny, std::move(done));
}

namespace {
// A callback that fulfils a promise, and the future it gives.
std::pair<DurableIndex::WriteCallback, std::future<Status>> Promised() {
  auto p = std::make_shared<std::promise<Status>>();
  auto f = p->get_future();
  return {[p](const Status& s) { p->set_value(s); }, std::move(f)};
}
}  // namespace

std::future<Status> DurableIndex::UpsertAsync(uint64_t id, std::span<const float> v,
                                              std::span<const std::byte> payload) {
  auto [cb, f] = Promised();
  UpsertAsync(id, v, payload, std::move(cb));
  return std::move(f);
}
std::future<Status> DurableIndex::RemoveAsync(uint64_t id) {
  auto [cb, f] = Promised();
  RemoveAsync(id, std::move(cb));
  return std::move(f);
}
std::future<Status> DurableIndex::ApplyAsync(const WriteBatch& batch) {
  auto [cb, f] = Promised();
  ApplyAsync(batch, std::move(cb));
  return std::move(f);
}

Status DurableIndexImpl::Apply(const WriteBatch& batch) {
  for (const auto& sub : batch.op().ops)
    if (auto* u = std::get_if<wal::UpsertOp>(&sub)) VECWAL_RETURN_IF_ERROR(Validate(u->id, u->vector, u->payload));
  if (batch.size() == 0) return Status::OK();
  return Write(batch.op(), 0, Need::kAny);
}

// A search holds the index shared, and every merge into it (every apply,
// where recent_writes_merge_at is 0) needs it exclusive, and readers queue
// behind a waiting merge. Queries are therefore taken in chunks sized to
// hold the index for about search_hold_us, from the time a query took last:
// one query at a time on a big Flat index (tens of ms each here), dozens at
// a time on HNSW. Each query sees one durable state; the queries of one call
// may see successive ones. vecwal-bench mixed, 20k x 768-d Flat, 16 writers
// beside 2 searchers: 15 -> 107 upserts/s, for 35 instead of 56 queries/s
// (single queries lose FAISS's batching).
//
// FAISS gives each query of a call one thread, so a chunk of one query runs
// on one core: a lone searcher of that Flat index got 0.49x FAISS's queries/s
// on 2 cores. While no write is in flight nobody waits for the index, so a
// chunk then takes at least this search's share of FAISS's threads: about
// one query's time still, on every core. Wider chunks beside writes took
// the cores the writers' applies need (vecwal-bench mixed: upserts -20 to
// -37%; BENCHMARKS.md, seventeenth session).
//
// Where queries cost less each in bigger calls (the index's
// SearchBatchFloor: FAISS's BLAS product, over a Flat index or an IVF
// index's Flat quantizer), a call with that many takes them at least that
// many a chunk, and a short tail with the chunk before it: in chunks of one
// query, 64 queries a call ran at 0.17x FAISS's queries/s on 20k x 768-d.
// Like a merge's steps, those chunks then double while nobody waits for the
// index and no write is in flight, and fall back at once when someone does;
// but only up to about search_batch_hold_us each: a merge that comes waits
// for the chunk in progress, and on a 1M-vector Flat index a chunk of 20
// queries alone holds it for about a second here.
Result<index::SearchResults> DurableIndexImpl::Search(std::span<const float> queries, size_t k,
                                                      const index::SearchParams& asked) const {
  const index::SearchParams params{asked.nprobe != 0 ? asked.nprobe : opts_.search.nprobe,
                                   asked.ef_search != 0 ? asked.ef_search : opts_.search.ef_search,
                                   asked.filter ? asked.filter : opts_.search.filter,
                                   asked.ids ? asked.ids : opts_.search.ids};
  // Chunks are sized from the time per query of earlier searches, which
  // other knobs would make wrong by orders of magnitude: such a call times
  // its own, from a first chunk of one query (or of the batch floor).
  const bool own_rates = params.nprobe != opts_.search.nprobe || params.ef_search != opts_.search.ef_search;
  std::array<std::atomic<uint64_t>, 3> call_rates{};
  auto& rates = own_rates                      ? call_rates
                : params.filter || params.ids ? filtered_search_ns_per_query_
                                              : search_ns_per_query_;
  searches_.fetch_add(1);
  const struct Leave {
    std::atomic<size_t>& n;
    ~Leave() { n.fetch_sub(1); }
  } leave{searches_};
  const uint64_t hold_ns = opts_.search_hold_us * 1000, batch_hold_ns = opts_.search_batch_hold_us * 1000;
  const size_t dim = opts_.spec.dim;
  if (queries.empty() || queries.size() % dim != 0 || k == 0) {
    std::shared_lock r(state_mu_);
    return index_->Search(queries, k, nullptr, params);  // its error names the problem
  }
  // FAISS answers a NaN query with no hits at all, as if the index were empty.
  VECWAL_RETURN_IF_ERROR(
      index::CheckFinite(queries, dim, [](size_t row) { return "query " + std::to_string(row); }));
  const size_t nq = queries.size() / dim;
  VECWAL_RETURN_IF_ERROR(index::CheckResultSize(nq, k));
  index::SearchResults out;
  out.nq = nq;
  out.k = k;
  out.ids.reserve(nq * k);
  out.distances.reserve(nq * k);
  for (size_t done = 0; done < nq;) {
    const size_t left = nq - done;
    const bool batched = search_floor_ > 1 && left >= search_floor_;
    const uint64_t per_query = rates[batched].load(std::memory_order_relaxed);
    size_t chunk = per_query == 0 || hold_ns == 0 ? left : std::clamp<size_t>(hold_ns / per_query, 1, left);
    if (own_rates && per_query == 0 && hold_ns != 0) chunk = batched ? search_floor_ : 1;
    bool grew = false;
    if (batched) {
      chunk = std::max(chunk, search_floor_);
      if (const size_t g = std::min<size_t>(search_unwatched_.load(), 20); g > 0 && per_query != 0) {
        const uint64_t latest = rates[2].load(std::memory_order_relaxed);
        const size_t grown = std::min(chunk << g, batch_hold_ns / std::max<uint64_t>(latest, 1));
        grew = grown > chunk;
        chunk = std::max(chunk, grown);
      }
      chunk = std::min(chunk, left);
      if (left - chunk < search_floor_) chunk = left;  // a short tail would cost more than taking it now
    }
    if (const size_t share = std::max<size_t>(1, index::SearchThreads() / searches_.load());
        chunk < share && placed_seq_.load() == applied_seq_.load())
      chunk = std::min(share, left);
    const auto t0 = Clock::now();
    auto part = [&]() -> Result<index::SearchResults> {
      const auto q = queries.subspan(done * dim, chunk * dim);
      std::shared_lock r(state_mu_);
      ++search_holds_;
      // The recent writes are scanned first (the newest set, then the one a
      // merge is moving, less the ids the newest hides), and the ids they
      // hide in the index noted, at one point in log order; a merge's step
      // cannot come between that and the index's own search while state_mu_
      // is held. The index's own search runs without recent_mu_: writers
      // apply under it.
      index::SearchResults recent;
      index::IdSet hidden;
      bool any_recent = false;
      {
        std::shared_lock rr(recent_mu_);
        if (!recent_->empty() || merging_ != nullptr) {
          any_recent = true;
          recent = recent_->Search(q, k, params);
          if (merging_ != nullptr) {
            index::IdSet newer;
            for (uint64_t id : recent_->ids())
              if (merging_->Find(id)) newer.insert(id);
            recent = MergeHits(merging_->Search(q, k + newer.size(), params), newer, recent, k,
                               opts_.spec.metric);
            for (uint64_t id : merging_->ids())
              if (index_->Contains(id)) hidden.insert(id);
          }
          for (uint64_t id : recent_->ids())
            if (index_->Contains(id)) hidden.insert(id);
        }
      }
      auto found = index_->Search(q, k, any_recent ? &hidden : nullptr, params);
      if (batched)
        search_unwatched_ = state_mu_.has_exclusive_waiters() || placed_seq_.load() != applied_seq_.load() ||
                                    bound_waiters_.load() > 0
                                ? 0
                                : search_unwatched_.load() + 1;
      if (!any_recent || !found.ok()) return found;
      return MergeHits(*found, hidden, recent, k, opts_.spec.metric);
    }();
    if (!part.ok()) return part.status();
    const auto ns = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
    // A grown chunk says little of the rate a chunk held to the time has,
    // but bounds the next one's growth: a query costs less in a bigger
    // chunk, so the rate of a smaller one overestimates a bigger one's time.
    const uint64_t rate = std::max<uint64_t>(1, ns / chunk);
    if (!grew) rates[batched].store(rate, std::memory_order_relaxed);
    if (batched) rates[2].store(rate, std::memory_order_relaxed);
    out.ids.insert(out.ids.end(), part->ids.begin(), part->ids.end());
    out.distances.insert(out.distances.end(), part->distances.begin(), part->distances.end());
    done += chunk;
  }
  return out;
}

Result<Entry> DurableIndexImpl::Get(uint64_t id) const {
  std::shared_lock r(state_mu_);
  {
    std::shared_lock rr(recent_mu_);
    if (auto f = FindRecentLocked(id)) {
      if (!f->present) return Status::NotFound("id " + std::to_string(id) + " is not in the index");
      return Entry{{f->vector.begin(), f->vector.end()}, {f->payload.begin(), f->payload.end()}};
    }
  }
  Entry e;
  VECWAL_ASSIGN_OR_RETURN(e.vector, index_->Reconstruct(id));
  if (const auto* p = payloads_.Find(id)) e.payload = *p;
  return e;
}

// The index and payloads_ hold still while the scan holds merge_mu_ (no
// merge step) and state_mu_ shared (no Train, no compaction put in place).
// Held with state_mu_ alone, a merge would wait for the scan at state_mu_'s
// gate, and every search and Get behind it. The recent writes, the newest set and
// then the one a merge is moving, are copied at one point in log order, so
// that writers go on applying under recent_mu_. The ids they decide,
// present or removed, are the ones the index's entries give way to.
Result<uint64_t> DurableIndexImpl::Scan(size_t piece, const ScanVisitor& visit) const {
  if (piece == 0) return Status::InvalidArgument("a scan's pieces hold at least 1 entry; asked for 0");
  const uint32_t dim = opts_.spec.dim;
  std::lock_guard m(merge_mu_);
  std::shared_lock r(state_mu_);
  index::IdSet decided;
  std::vector<uint64_t> ids;
  std::vector<float> vectors;
  std::vector<std::vector<std::byte>> payloads;
  uint64_t lsn = 0;
  {
    std::shared_lock rr(recent_mu_);
    lsn = recent_last_lsn_;
    auto take = [&](const RecentWrites& w) {
      w.ForEach([&](uint64_t id, const float* v, std::span<const std::byte> p) {
        if (!decided.insert(id).second || v == nullptr) return;  // a newer set decided it, or it was removed
        ids.push_back(id);
        vectors.insert(vectors.end(), v, v + dim);
        payloads.emplace_back(p.begin(), p.end());
      });
    };
    take(*recent_);
    if (merging_ != nullptr) take(*merging_);
  }
  std::vector<std::span<const std::byte>> views;
  for (size_t at = 0; at < ids.size(); at += piece) {
    const size_t n = std::min(piece, ids.size() - at);
    views.assign(payloads.begin() + static_cast<std::ptrdiff_t>(at),
                 payloads.begin() + static_cast<std::ptrdiff_t>(at + n));
    VECWAL_RETURN_IF_ERROR(visit({{ids.data() + at, n}, {vectors.data() + at * dim, n * dim}, views}));
  }
  VECWAL_RETURN_IF_ERROR(index_->ScanLive(piece, [&](std::span<const uint64_t> in, std::span<const float> v) {
    ids.clear();
    vectors.clear();
    views.clear();
    for (size_t i = 0; i < in.size(); ++i) {
      if (decided.contains(in[i])) continue;
      if (!decided.empty()) {  // else the index's own piece is passed on as it is
        ids.push_back(in[i]);
        vectors.insert(vectors.end(), v.begin() + static_cast<std::ptrdiff_t>(i * dim),
                       v.begin() + static_cast<std::ptrdiff_t>((i + 1) * dim));
      }
      const auto* p = payloads_.Find(in[i]);
      views.push_back(p != nullptr ? std::span<const std::byte>(*p) : std::span<const std::byte>());
    }
    if (views.empty()) return Status::OK();
    if (decided.empty()) return visit({in, v, views});
    return visit({ids, vectors, views});
  }));
  return lsn;
}

// Not under state_mu_: with a merge waiting for a search, a shared hold
// waits for the search too (and a write's presence check, which holds
// write_mu_, would hold every writer back with it). Every change to the ids
// the index holds is a merge's step, which holds recent_mu_ exclusively, so
// recent_mu_ shared is enough to read them.
bool DurableIndexImpl::Contains(uint64_t id) const {
  std::shared_lock rr(recent_mu_);
  if (auto f = FindRecentLocked(id)) return f->present;
  return index_->Contains(id);
}

std::optional<RecentWrites::Found> DurableIndexImpl::FindRecentLocked(uint64_t id) const {
  if (auto f = recent_->Find(id)) return f;
  if (merging_ != nullptr) return merging_->Find(id);
  return std::nullopt;
}

// The index's count, corrected for each id written since it was merged by
// the top entry of that id: the newest recent writes, else the set a merge
// is moving.
size_t DurableIndexImpl::Size() const {
  std::shared_lock r(state_mu_);
  std::shared_lock rr(recent_mu_);
  size_t n = index_->size();
  recent_->ForEach([&](uint64_t id, const float* v, std::span<const std::byte>) {
    n = n + (v != nullptr) - index_->Contains(id);
  });
  if (merging_ != nullptr)
    merging_->ForEach([&](uint64_t id, const float* v, std::span<const std::byte>) {
      if (!recent_->Find(id)) n = n + (v != nullptr) - index_->Contains(id);
    });
  return n;
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

Result<ScrubReport> DurableIndexImpl::Scrub() {
  ScrubReport rep;
  auto no_generation = [&](uint64_t lsn) { NoGenerationLocked(lsn); };  // retired by the repair
  {
    std::lock_guard c(ckpt_mu_);  // no checkpoint retired, and no log released, under the reads
    if (!wal_) return Status::Unavailable(opts_.dir + " is closed");
    const uint64_t durable = wal_->durable_lsn();  // past it, a flush in flight may look torn
    VECWAL_ASSIGN_OR_RETURN(auto lsns, ListCheckpoints(*fs_, opts_.dir));
    for (uint64_t l : lsns) {
      const std::string path = opts_.dir + "/" + CheckpointFileName(l);
      auto v = VerifyCheckpoint(*fs_, path);
      std::vector<std::string> found;
      if (!v.ok()) found.push_back(v.status().ToString());
      else
        for (const auto& sec : v->sections)
          if (!sec.problem.empty()) found.push_back(sec.problem);
      if (found.empty()) {
        ++rep.checkpoints_verified;
        continue;
      }
      rep.problems.insert(rep.problems.end(), found.begin(), found.end());
      no_generation(l);
    }
    // The copy a repair left is read back too; a damaged one is removed, and
    // the repair writes it anew.
    const std::string copies = opts_.dir + "/" + kCheckpointCopyDir;
    if (auto listed = ListCheckpoints(*fs_, copies); listed.ok()) {
      for (uint64_t l : *listed) {
        const std::string path = copies + "/" + CheckpointFileName(l);
        auto v = VerifyCheckpoint(*fs_, path);
        const std::string problem = v.ok() ? v->problems() : v.status().ToString();
        if (problem.empty()) {
          ++rep.checkpoints_verified;
          continue;
        }
        rep.problems.push_back(problem);
        (void)fs_->Remove(path);
        checkpoint_copy_wanted_ = true;
      }
    }
    const uint64_t from = lsns.empty() ? 1 : lsns.back() + 1;
    auto scan = wal::ScanLog(*fs_, opts_.dir + "/wal", from, wal::RecoveryMode::kSalvage, [&](const wal::LogRecord& r) {
      rep.log_records_verified += r.lsn <= durable;
      return Status::OK();
    });
    if (!scan.ok()) return scan.status().WithContext("scrubbing " + opts_.dir + "/wal");
    uint64_t first_damaged = ~0ull;
    for (const auto& d : scan->dropped)
      if (d.first_lsn <= durable) {
        rep.problems.push_back(d.where + ": LSNs " + std::to_string(d.first_lsn) + " to " +
                               std::to_string(d.last_lsn) + ": " + d.reason);
        first_damaged = std::min(first_damaged, d.first_lsn);
      }
    // Damage to the newest records reads as a torn tail, which salvage cuts
    // without a dropped range; here every LSN up to `durable` is known
    // acknowledged.
    if (scan->last_lsn < durable) {
      rep.problems.push_back(opts_.dir + "/wal: LSNs " + std::to_string(scan->last_lsn + 1) + " to " +
                             std::to_string(durable) + " are acknowledged but the log ends before them" +
                             (scan->tail_cut ? ": " + scan->tail_note : ""));
      first_damaged = std::min(first_damaged, scan->last_lsn + 1);
    }
    if (rep.problems.empty()) return rep;
    // A checkpoint below damaged log records is no generation either: an Open
    // from it would replay into the damage. The repair retires it, so that
    // the log kept starts past the damage, not at a checkpoint that needs it.
    for (uint64_t l : lsns)
      if (l < first_damaged) no_generation(l);
    // Written even with nothing logged since the newest checkpoint: it is
    // what retires the damaged ones (and replaces the newest, if that is one).
    checkpoint_on_disk_ = false;
  }
  VECWAL_ASSIGN_OR_RETURN(rep.repaired_at_lsn, Checkpoint());
  return rep;
}

Result<BackupInfo> DurableIndexImpl::Backup(const std::string& dest) {
  auto refused = [&](const std::string& why) { return Status::InvalidArgument("backup to " + dest + ": " + why); };
  if (dest.empty()) return refused("no directory named");
  VECWAL_RETURN_IF_ERROR(fs_->CreateDir(dest));
  VECWAL_ASSIGN_OR_RETURN(const auto names, fs_->ListDir(dest));
  // The lock file alone is what a backup that failed leaves, and holds nothing.
  for (const auto& n : names)
    if (n != "LOCK") return refused("the directory is not empty (it holds " + n + ")");
  // Held until the copy is named, so that no Open makes a store there meanwhile.
  VECWAL_ASSIGN_OR_RETURN(const auto dest_lock, fs_->LockDir(dest, 0));
  const auto parent = std::filesystem::path(dest).parent_path();
  VECWAL_RETURN_IF_ERROR(fs_->SyncDir(parent.empty() ? "." : parent.string()));  // dest's own entry
  std::lock_guard c(ckpt_mu_);  // the checkpoint copied is not retired under the copy
  if (!wal_) return Status::Unavailable(opts_.dir + " is closed");
  for (int attempt = 0;; ++attempt) {
    VECWAL_ASSIGN_OR_RETURN(const uint64_t lsn, CheckpointLocked());
    const std::string from = opts_.dir + "/" + CheckpointFileName(lsn);
    auto copied = CopyCheckpoint(*fs_, from, dest, LogPacing());
    if (!copied.ok()) {
      // Damage found in the store's own file, which Open would have fallen
      // back from: it is no generation, and is written anew to be copied.
      if (copied.status().code() != Status::Code::kCorruption || attempt > 0)
        return copied.status().WithContext("backup of " + opts_.dir + " to " + dest);
      NoGenerationLocked(lsn);
      checkpoint_on_disk_ = false;
      continue;
    }
    // Read back: a device may store other bytes than it acknowledged.
    BackupInfo info{lsn, copied->file_bytes, dest + "/" + CheckpointFileName(lsn)};
    auto v = VerifyCheckpoint(*fs_, info.path);
    const std::string problem = v.ok() ? v->problems() : "";
    if (v.ok() && problem.empty()) return info;
    (void)fs_->Remove(info.path);
    if (!v.ok() && v.status().code() != Status::Code::kCorruption)
      return v.status().WithContext("backup of " + opts_.dir + " to " + dest + ": reading the copy back");
    return Status::Corruption("backup of " + opts_.dir + " to " + dest +
                              ": the copy read back wrong: " + (v.ok() ? problem : v.status().ToString()));
  }
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

DurableIndexStats DurableIndexImpl::Stats() const {
  std::lock_guard lk(write_mu_);
  DurableIndexStats s;
  s.size = Size();
  s.recovery = recovery_;
  s.last_checkpoint_lsn = last_checkpoint_lsn_.load();
  s.log_bytes_since_checkpoint = log_bytes_since_checkpoint_.load();
  s.durable_lsn = wal_ ? wal_->durable_lsn() : 0;
  s.ops_applied = ops_applied_.load();
  s.apply_holds = apply_holds_.load();
  s.search_holds = search_holds_.load();
  s.merges = merges_.load();
  s.merge_steps = merge_steps_.load();
  {
    std::shared_lock rr(recent_mu_);
    s.recent_writes = recent_->size() + (merging_ != nullptr ? merging_->size() : 0);
  }
  s.compactions = compactions_.load();
  s.checkpoints = checkpoints_.load();
  s.last_checkpoint_s = static_cast<double>(last_checkpoint_ns_.load()) / 1e9;
  s.stalled_writes = stalled_writes_.load();
  s.write_stall_s = static_cast<double>(write_stall_ns_.load()) / 1e9;
  s.writes_waiting = writes_waiting_.load();
  {
    std::lock_guard l(auto_mu_);
    s.auto_checkpoint_failures = auto_checkpoint_failures_;
    if (!last_auto_checkpoint_error_.ok()) s.last_auto_checkpoint_error = last_auto_checkpoint_error_.ToString();
  }
  {
    std::shared_lock r(state_mu_);
    s.tombstones = index_->tombstones();
    s.searched_on = index_->SearchedOn();
  }
  return s;
}

}  // namespace vecwal::recovery
