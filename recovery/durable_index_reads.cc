// DurableIndexImpl's reads: searches (the index beside the recent writes),
// Get, Contains, Size and Scan.
#include "recovery/durable_index_impl.h"

#include <algorithm>
#include <chrono>

namespace vecwal::recovery {

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

}  // namespace vecwal::recovery
