// DurableIndexImpl's writes: checks against the ids present, placement in
// the log, the wait for durability, and the log limit writers wait at.
#include "recovery/durable_index_impl.h"

#include <chrono>
#include <semaphore>

#include "io/time_slice.h"

namespace vecwal::recovery {

void WriteBatch::Upsert(uint64_t id, std::span<const float> v, std::span<const std::byte> payload) {
  op_.ops.emplace_back(wal::UpsertOp{id, {v.begin(), v.end()}, {payload.begin(), payload.end()}});
}
void WriteBatch::Remove(uint64_t id) { op_.ops.emplace_back(wal::DeleteOp{id}); }

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

}  // namespace vecwal::recovery
