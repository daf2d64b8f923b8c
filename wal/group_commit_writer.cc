#include "wal/group_commit_writer.h"

#include <chrono>
#include <cstring>

#include "io/crc32c.h"
#include "io/time_slice.h"
#include "wal/segment_files.h"

namespace vecwal::wal {
namespace {
// The body of a spin-wait: tells the CPU (and a hypervisor) we are spinning.
inline void CpuRelax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}
}  // namespace

GroupCommitWriter::GroupCommitWriter(FileSystem& fs, std::string dir, const WriterOptions& opts,
                                     std::unique_ptr<DurableWriteQueue> q, SegmentAllocator& alloc, WriterStart start)
    : fs_(fs),
      dir_(std::move(dir)),
      opts_(opts),
      queue_(std::move(q)),
      alloc_(alloc),
      next_lsn_(start.next_lsn),
      seg_id_(start.segment_id),
      epoch_(start.epoch),
      seg_used_(start.offset),
      durable_(start.next_lsn - 1),
      active_file_(std::move(start.file)),
      active_id_(start.segment_id),
      live_(std::move(start.live_first_lsn)) {
  alloc_.PrepareAsync(seg_id_ + 1);
  loop_ = std::thread([this] { Loop(); });
}

GroupCommitWriter::~GroupCommitWriter() { (void)Close(); }

Status GroupCommitWriter::Close() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  queue_->Wake();
  if (loop_.joinable()) loop_.join();
  std::lock_guard lk(mu_);
  return failed_;
}

Status GroupCommitWriter::status() const {
  std::lock_guard lk(mu_);
  return failed_;
}

WriterStats GroupCommitWriter::stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

Status GroupCommitWriter::CheckRecordSize(size_t payload_len) const {
  const uint64_t room = opts_.segment_bytes - opts_.block_size;
  if (payload_len > UINT32_MAX || RecordFootprint(payload_len) > room)
    return Status::InvalidArgument("record of " + std::to_string(payload_len) + " bytes does not fit in a segment (" +
                                   std::to_string(room - kRecordHeaderSize) +
                                   " bytes at most); raise segment_bytes");
  return Status::OK();
}

// Invariant: open_, when set, belongs to segment seg_id_ and starts at
// seg_used_; seg_used_ only moves past sealed flushes.
Status GroupCommitWriter::Place(const RecordView& rec, uint32_t payload_crc, uint64_t* lsn) {
  if (!failed_.ok()) return failed_;
  if (stopping_) return Status::Unavailable("the log is closing");
  const uint64_t block = opts_.block_size;
  const uint64_t fp = RecordFootprint(rec.payload.size());
  if (open_ && (open_->used + fp > open_->buf.size() ||
                open_->offset + AlignUp(open_->used + fp, block) > opts_.segment_bytes))
    Seal();
  if (!open_) {
    if (seg_used_ + AlignUp(fp, block) > opts_.segment_bytes) {
      ++seg_id_;  // rotate: the submission thread activates it after draining
      epoch_ = NewSegmentEpoch();
      seg_used_ = block;
    }
    size_t cap = std::max<size_t>(opts_.max_write_bytes, AlignUp(fp, block));
    auto f = std::make_unique<Flush>();
    if (!free_buffers_.empty() && free_buffers_.back().size() >= cap) {
      f->buf = std::move(free_buffers_.back());
      free_buffers_.pop_back();
    } else {
      f->buf = AlignedBuffer(cap, 4096);
    }
    f->segment_id = seg_id_;
    f->epoch = epoch_;
    f->offset = seg_used_;
    f->first_lsn = next_lsn_;
    open_ = std::move(f);
  }
  std::byte* p = open_->buf.data() + open_->used;
  RecordHeader h;
  h.length = static_cast<uint32_t>(rec.payload.size());
  h.lsn = next_lsn_++;
  h.acked = durable_.load(std::memory_order_acquire);
  h.segment_id = open_->segment_id;
  h.type = static_cast<uint8_t>(rec.type);
  EncodeRecordHeader(h, p);
  if (!rec.payload.empty()) std::memcpy(p + kRecordHeaderSize, rec.payload.data(), rec.payload.size());
  h.crc = RecordCrc(payload_crc, p, open_->epoch);
  std::memcpy(p, &h.crc, sizeof(h.crc));
  // Alignment gap after the payload: zeros, so a reader never sees stale bytes.
  std::memset(p + kRecordHeaderSize + h.length, 0, fp - kRecordHeaderSize - h.length);
  open_->used += fp;
  open_->last_lsn = h.lsn;
  placed_.fetch_add(1, std::memory_order_release);
  ++stats_.records;
  stats_.payload_bytes += h.length;
  *lsn = h.lsn;
  return Status::OK();
}

void GroupCommitWriter::Seal() {
  size_t padded = AlignUp(open_->used, opts_.block_size);
  std::memset(open_->buf.data() + open_->used, 0, padded - open_->used);
  seg_used_ = open_->offset + padded;
  sealed_.push_back(std::move(open_));
}

// A partly filled buffer goes out at once when the device is idle; while
// writes are in flight it waits to grow, so that under load each write
// carries more records and each completion wakes more appenders. With the
// device more than half busy it waits to fill: its records lose nothing (the
// writes ahead of it keep the device busy) and the device gets full-size
// writes. While a batch is being copied in, only full buffers go: its last
// partial one follows when the batch is whole.
bool GroupCommitWriter::OpenBufferDue(size_t busy) const {
  if (!open_ || open_->used == 0 || appending_many_ != 0) return false;
  return busy == 0 || (open_->used >= opts_.min_concurrent_write_bytes && 2 * busy < opts_.max_writes_in_flight);
}

void GroupCommitWriter::WakeLoopIfIdle(std::unique_lock<std::mutex>& lk) {
  if (!loop_idle_) return;
  // Only when the loop would take something: see TakeReady.
  if (sealed_.empty() && !OpenBufferDue(inflight_count_)) return;
  loop_idle_ = false;  // one wake per sleep
  lk.unlock();
  queue_->Wake();
}

// Called with mu_ held right after the (last) record is placed, so that the
// open buffer carries it. Blocking appends wait on that flush's wake group,
// which the submission thread sets once the flush and all before it are
// durable: no waiter wakes to find its record still in flight. (A semaphore
// per appender, each released in turn, measured 10-20% slower with 64
// appenders on 2 cores.)
Status GroupCommitWriter::RegisterAndWait(std::unique_lock<std::mutex>& lk) {
  std::shared_ptr<WakeGroup> g = open_->group;
  // A lone waiter polls for the length of a fast device write before it
  // sleeps: waking a sleeping thread costs tens of microseconds on a VM, a
  // third of a 4 KiB durable write. With company, yielding is cheaper.
  const bool alone = blocked_.fetch_add(1, std::memory_order_relaxed) == 0 && callbacks_.empty();
  WakeLoopIfIdle(lk);
  if (lk.owns_lock()) lk.unlock();
  auto pending = [&] { return g->state.load(std::memory_order_acquire) == WakeGroup::kPending; };
  if (alone) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kWaiterSpinMicros);
    while (pending() && std::chrono::steady_clock::now() < until) CpuRelax();
  }
  for (int i = 0; i < kWaiterYields && pending(); ++i) std::this_thread::yield();
  g->state.wait(WakeGroup::kPending, std::memory_order_acquire);
  blocked_.fetch_sub(1, std::memory_order_relaxed);
  if (g->state.load(std::memory_order_acquire) == WakeGroup::kDurable) return Status::OK();
  lk.lock();
  return failed_;
}

void GroupCommitWriter::Signal(WakeGroup& g, uint32_t state) {
  g.state.store(state, std::memory_order_release);
  g.state.notify_all();
}

Result<uint64_t> GroupCommitWriter::Append(const RecordView& rec) {
  VECWAL_RETURN_IF_ERROR(CheckRecordSize(rec.payload.size()));
  uint32_t crc = crc32c::Value(rec.payload);
  uint64_t lsn = 0;
  std::unique_lock lk(mu_);
  VECWAL_RETURN_IF_ERROR(Place(rec, crc, &lsn));
  VECWAL_RETURN_IF_ERROR(RegisterAndWait(lk));
  return lsn;
}

// Leaves `lk` holding mu_ after the last record is placed, so the caller
// registers its wait or callback before the loop can see the records durable.
Status GroupCommitWriter::PlaceMany(std::span<const RecordView> recs, std::vector<uint64_t>* lsns,
                                    std::unique_lock<std::mutex>& lk, uint64_t* last) {
  for (const auto& r : recs) VECWAL_RETURN_IF_ERROR(CheckRecordSize(r.payload.size()));
  size_t i = 0;
  std::vector<uint32_t> crcs;
  while (i < recs.size()) {
    // Checksums outside the lock; copies under it, a few hundred KiB at a time
    // so the submission thread can take sealed buffers meanwhile.
    size_t end = i, bytes = 0;
    while (end < recs.size() && bytes < (256u << 10)) bytes += recs[end++].payload.size() + kRecordHeaderSize;
    crcs.resize(end - i);
    for (size_t k = i; k < end; ++k) crcs[k - i] = crc32c::Value(recs[k].payload);
    lk.lock();
    if (i == 0) ++appending_many_;
    Status s;
    for (size_t k = i; k < end && s.ok(); ++k) {
      s = Place(recs[k], crcs[k - i], last);
      if (s.ok() && lsns) lsns->push_back(*last);
    }
    i = end;
    if (!s.ok() || i == recs.size()) --appending_many_;
    if (!s.ok()) {
      lk.unlock();
      return s;
    }
    if (i == recs.size()) return Status::OK();
    WakeLoopIfIdle(lk);
    if (lk.owns_lock()) lk.unlock();
  }
  return Status::OK();
}

Status GroupCommitWriter::AppendMany(std::span<const RecordView> recs, std::vector<uint64_t>* lsns) {
  if (recs.empty()) return Status::OK();
  std::unique_lock lk(mu_, std::defer_lock);
  uint64_t last = 0;
  VECWAL_RETURN_IF_ERROR(PlaceMany(recs, lsns, lk, &last));
  return RegisterAndWait(lk);
}

void GroupCommitWriter::AppendManyAsync(std::span<const RecordView> recs, AppendCallback done) {
  if (recs.empty()) return done(Status::OK(), durable_lsn());
  std::unique_lock lk(mu_, std::defer_lock);
  uint64_t last = 0;
  Status s = PlaceMany(recs, nullptr, lk, &last);
  if (!s.ok()) return done(s, 0);
  callbacks_.emplace_back(last, std::move(done));
  WakeLoopIfIdle(lk);
}

void GroupCommitWriter::AppendAsync(const RecordView& rec, AppendCallback done) {
  Status s = CheckRecordSize(rec.payload.size());
  if (!s.ok()) return done(s, 0);
  uint32_t crc = crc32c::Value(rec.payload);
  std::unique_lock lk(mu_);
  uint64_t lsn = 0;
  s = Place(rec, crc, &lsn);
  if (!s.ok()) {
    lk.unlock();
    return done(s, 0);
  }
  callbacks_.emplace_back(lsn, std::move(done));
  WakeLoopIfIdle(lk);
}

Result<size_t> GroupCommitWriter::ReleaseBefore(uint64_t lsn) {
  std::lock_guard lk(seg_mu_);
  size_t released = 0;
  while (live_.size() > 1) {
    auto first = live_.begin();
    auto second = std::next(first);
    // The segment holds LSNs [first->second, second->second); wholly below lsn?
    if (second->second > lsn) break;
    VECWAL_RETURN_IF_ERROR(alloc_.Retire(dir_ + "/" + SegmentFileName(first->first)));
    live_.erase(first);
    ++released;
  }
  if (released > 0) {
    VECWAL_RETURN_IF_ERROR(fs_.SyncDir(dir_));
    std::lock_guard slk(mu_);
    stats_.segments_released += released;
  }
  return released;
}

// ---- submission thread ----

std::vector<std::unique_ptr<GroupCommitWriter::Flush>> GroupCommitWriter::TakeReady(bool* idle) {
  std::vector<std::unique_ptr<Flush>> out;
  std::lock_guard lk(mu_);
  *idle = !failed_.ok();  // a failed log submits nothing more; it only reaps
  if (*idle) return out;
  size_t room = opts_.max_writes_in_flight - inflight_count_;
  while (out.size() < room) {
    if (sealed_.empty() && OpenBufferDue(inflight_count_ + out.size())) Seal();
    if (sealed_.empty()) break;
    const Flush& f = *sealed_.front();
    uint64_t seg = out.empty() ? active_id_ : out.front()->segment_id;
    // A new segment starts only once every write to the old one completed.
    if (f.segment_id != seg && (!out.empty() || inflight_count_ > 0)) break;
    out.push_back(std::move(sealed_.front()));
    sealed_.pop_front();
  }
  loop_idle_ = false;
  inflight_count_ += out.size();
  if (out.empty()) {
    loop_idle_ = inflight_count_ < opts_.max_writes_in_flight;
    *idle = true;
  }
  return out;
}

Status GroupCommitWriter::Activate(const Flush& first) {
  auto file = alloc_.Take(first.segment_id);
  if (!file.ok()) return file.status();
  VECWAL_RETURN_IF_ERROR(WriteSegmentHeader(
      **file, {first.segment_id, first.epoch, first.first_lsn, opts_.segment_bytes, opts_.block_size}));
  active_file_ = std::move(file).value();
  active_id_ = first.segment_id;
  {
    std::lock_guard lk(seg_mu_);
    live_[first.segment_id] = first.first_lsn;
  }
  {
    std::lock_guard lk(mu_);
    ++stats_.rotations;
  }
  alloc_.PrepareAsync(active_id_ + 1);
  return Status::OK();
}

void GroupCommitWriter::Fail(const Status& s) {
  std::lock_guard lk(mu_);
  if (failed_.ok()) failed_ = s.WithContext("the log has failed and accepts no more appends");
  // Nothing unsubmitted will be written; its appenders get the error.
  open_.reset();
  sealed_.clear();
}

void GroupCommitWriter::Complete(const WriteCompletion& c) {
  auto* f = reinterpret_cast<Flush*>(c.tag);
  f->done = true;
  if (!c.status.ok()) Fail(c.status);
}

// Advances the durable LSN over the completed prefix; wakes waiters and runs
// callbacks outside the lock.
void GroupCommitWriter::Publish() {
  std::vector<std::pair<uint64_t, AppendCallback>> ready;
  std::vector<std::shared_ptr<WakeGroup>> woken;
  Status failed;
  bool ok;
  {
    std::lock_guard lk(mu_);
    ok = failed_.ok();
    // A failed log acknowledges nothing more: writes still in flight fail
    // their waiters now, as the async callbacks below.
    if (!ok)
      for (auto& f : inflight_) woken.push_back(f->group);
    while (!inflight_.empty() && inflight_.front()->done) {
      if (ok) {
        durable_.store(inflight_.front()->last_lsn, std::memory_order_release);
        woken.push_back(std::move(inflight_.front()->group));
      }
      free_buffers_.push_back(std::move(inflight_.front()->buf));
      inflight_.pop_front();
      --inflight_count_;
    }
    uint64_t d = durable_.load(std::memory_order_acquire);
    while (!callbacks_.empty() && (callbacks_.front().first <= d || !ok)) {
      ready.push_back(std::move(callbacks_.front()));
      callbacks_.pop_front();
    }
    failed = failed_;
  }
  for (auto& g : woken) Signal(*g, ok ? WakeGroup::kDurable : WakeGroup::kFailed);
  const uint64_t d = durable_.load(std::memory_order_acquire);
  for (auto& [lsn, cb] : ready) cb(lsn <= d ? Status::OK() : failed, lsn);
}

bool GroupCommitWriter::SpinForWork() {
  const uint64_t seen = placed_.load(std::memory_order_acquire);
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kIdleSpinMicros);
  while (std::chrono::steady_clock::now() < until) {
    if (placed_.load(std::memory_order_acquire) != seen) return true;
    CpuRelax();
  }
  return false;
}

void GroupCommitWriter::Loop() {
  // A hint: where the kernel refuses it, the thread keeps the default slice.
  if (opts_.thread_slice_us != 0) (void)RequestTimeSlice(opts_.thread_slice_us);
  std::vector<WriteCompletion> done;
  for (;;) {
    bool idle = false;
    auto batch = TakeReady(&idle);
    size_t submitted = 0;
    for (auto& f : batch) {
      Status s = f->segment_id != active_id_ ? Activate(*f) : Status::OK();
      if (s.ok()) {
        std::lock_guard lk(mu_);
        ++stats_.flushes;
        stats_.bytes_written += AlignUp(f->used, opts_.block_size);
      }
      WriteRequest req{active_file_.get(), f->offset, f->buf.span().first(AlignUp(f->used, opts_.block_size)),
                       reinterpret_cast<uint64_t>(f.get())};
      if (s.ok()) s = queue_->Submit(req);
      if (!s.ok()) {
        Fail(s);
        break;
      }
      inflight_.push_back(std::move(f));
      ++submitted;
    }
    if (submitted < batch.size()) {  // dropped after a failure
      std::lock_guard lk(mu_);
      inflight_count_ -= batch.size() - submitted;
    }
    if (idle) {
      std::lock_guard lk(mu_);
      bool drained = sealed_.empty() && (!open_ || open_->used == 0) && inflight_.empty();
      if (stopping_ && (drained || !failed_.ok()) && inflight_.empty()) break;
    }
    // With the device idle, an appender that was just acknowledged often
    // appends again within microseconds: watch for it briefly rather than
    // sleep, which saves a cross-thread wake on the latency path.
    if (idle && inflight_.empty() && SpinForWork()) idle = false;
    done.clear();
    Status s = queue_->Wait(done, idle);
    if (!s.ok()) Fail(s);
    for (const auto& c : done) Complete(c);
    Publish();
  }
  Publish();
}

}  // namespace vecwal::wal
