// DurableIndexImpl's life: Open (recovery: the newest checkpoint that
// verifies, then the log's tail replayed in windows), Close, its failed
// state and its stats. The other parts are durable_index_writes.cc,
// _merges.cc, _reads.cc, _checkpoints.cc and _maintenance.cc.
#include "recovery/durable_index_impl.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "recovery/replay_window.h"

namespace vecwal::recovery {

namespace {

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

std::string Describe(const index::IndexSpec& s) {
  return "dimension " + std::to_string(s.dim) + ", metric " + index::ToString(s.metric) + ", index '" +
         s.description + "'";
}

}  // namespace

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
  {
    std::lock_guard m(merge_mu_);  // no merge step starts a grower after this
    stop_growing_ = true;
  }
  if (grower_.joinable()) grower_.join();  // the growth stays the index's, and goes with it
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
  s.storage_growths = storage_growths_.load();
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
