// DurableIndexImpl's applies and merges: durable ops into the recent
// writes, in log order, and the recent writes into the index, in steps.
#include "recovery/durable_index_impl.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <thread>

#include "io/time_slice.h"

namespace vecwal::recovery {

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
  std::unique_ptr<index::IndexRoom> room, grown;
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
    if ((grown = index_->TakeGrowth()) != nullptr) ++storage_growths_;  // a growth whole since the last step
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
    if (s.ok()) StartGrowth();
    waited = state_mu_.has_waiters() || recent_mu_.has_waiters();
    c.unwatched = waited || bound_waiters_.load() > 0 ? 0 : c.unwatched + 1;
  }
  room.reset();  // a taken room holds the old storage: freed here, not in the hold
  grown.reset();
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

void DurableIndexImpl::StartGrowth() {
  if (stop_growing_ || growing_.load() || !index_->BeginGrowth(opts_.grow_storage_ahead_from)) return;
  if (grower_.joinable()) grower_.join();  // it has no steps left, and takes no lock after
  growing_ = true;
  grower_ = std::thread([this] { GrowStorage(); });
}

// Steps of a thirty-second of the storage, 8 MiB at most: each holds merges
// back for its copy and faults (a few ms here), and searches go on beside it.
void DurableIndexImpl::GrowStorage() {
  for (bool more = true; more && !stop_growing_.load();) {
    std::shared_lock w(state_mu_);
    const size_t bytes = index_->capacity() * opts_.spec.dim * sizeof(float);
    more = index_->GrowStep(std::clamp<size_t>(bytes / 32, 4 << 10, 8 << 20));
  }
  growing_ = false;
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

}  // namespace vecwal::recovery
