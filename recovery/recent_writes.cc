#include "recovery/recent_writes.h"

#include <algorithm>
#include <cstring>
#include <limits>

namespace vecwal::recovery {

size_t RecentWrites::SlotFor(uint64_t id) {
  auto [it, added] = slot_of_.try_emplace(id, static_cast<uint32_t>(ids_.size()));
  if (added) {
    ids_.push_back(id);
    present_.push_back(0);
    rows_.resize(rows_.size() + spec_.dim);
    payloads_.emplace_back();
  }
  return it->second;
}

void RecentWrites::Upsert(const wal::UpsertOp& u) {
  const size_t s = SlotFor(u.id);
  present_[s] = 1;
  std::memcpy(rows_.data() + s * spec_.dim, u.vector.data(), spec_.dim * sizeof(float));
  payloads_[s].assign(u.payload.begin(), u.payload.end());
}

// A delete keeps its entry: it hides the index's vector until the merge
// removes that.
void RecentWrites::Remove(uint64_t id) {
  const size_t s = SlotFor(id);
  present_[s] = 0;
  payloads_[s].clear();
}

void RecentWrites::Apply(const wal::Op& op) {
  if (auto* u = std::get_if<wal::UpsertOp>(&op)) Upsert(*u);
  else if (auto* d = std::get_if<wal::DeleteOp>(&op)) Remove(d->id);
  else if (auto* b = std::get_if<wal::BatchOp>(&op))
    for (const auto& sub : b->ops) {
      if (auto* su = std::get_if<wal::UpsertOp>(&sub)) Upsert(*su);
      else Remove(std::get<wal::DeleteOp>(sub).id);
    }
}

std::optional<RecentWrites::Found> RecentWrites::Find(uint64_t id) const {
  auto it = slot_of_.find(id);
  if (it == slot_of_.end()) return std::nullopt;
  const size_t s = it->second;
  Found f;
  f.present = present_[s] != 0;
  if (f.present) {
    f.vector = std::span(rows_.data() + s * spec_.dim, spec_.dim);
    f.payload = payloads_[s];
  }
  return f;
}

// By FAISS's Flat kernels (index::ExactKnn), so that a call of many queries
// gets its BLAS product here too. Scanned query by query on the calling
// thread, 544 recent writes held a store of 20k x 768-d to 0.54x FAISS's
// queries/s (vecwal-bench search, 256 queries a call, 2 searchers, whole
// calls at once); by these, 0.99x. Deleted entries' rows are searched with
// the rest and dropped after.
index::SearchResults RecentWrites::Search(std::span<const float> queries, size_t k,
                                         const index::SearchParams& p) const {
  index::SearchResults r;
  r.nq = queries.size() / spec_.dim;
  r.k = k;
  r.ids.assign(r.nq * k, index::kNoId);
  r.distances.assign(r.nq * k, std::numeric_limits<float>::quiet_NaN());
  const size_t n = ids_.size();
  const auto live = static_cast<size_t>(std::count(present_.begin(), present_.end(), uint8_t{1}));
  if (live == 0 || r.nq == 0 || k == 0) return r;
  // With a filter or a list of ids (`only` then has a byte a row, n being
  // at least `live`), FAISS compares only the rows they pass (and that are
  // present): k of them, not k past every row they would refuse.
  std::vector<uint8_t> only;
  if (p.ids) {
    only.assign(n, 0);
    for (uint64_t id : *p.ids)
      if (const auto it = slot_of_.find(id); it != slot_of_.end())
        only[it->second] = present_[it->second] != 0 && (!p.filter || p.filter(id)) ? 1 : 0;
  } else if (p.filter) {
    only.resize(n);
    for (size_t s = 0; s < n; ++s) only[s] = present_[s] != 0 && p.filter(ids_[s]) ? 1 : 0;
  }
  const size_t kk = !only.empty() ? std::min(n, k) : std::min(n, k + (n - live));
  std::vector<float> dist(r.nq * kk);
  std::vector<int64_t> rows(r.nq * kk);
  index::ExactKnn(spec_, queries, rows_, kk, dist, rows, only);
  std::vector<std::pair<float, uint64_t>> hits;
  for (size_t q = 0; q < r.nq; ++q) {
    hits.clear();
    for (size_t j = 0; j < kk; ++j) {
      const int64_t row = rows[q * kk + j];
      if (row < 0) break;
      // The mask is asked again: FAISS 1.7.3's search for k = 1 by L2 answers
      // row 0, at an infinite distance, where its selector passes no row.
      const auto s = static_cast<size_t>(row);
      if (present_[s] && (only.empty() || only[s])) hits.emplace_back(dist[q * kk + j], ids_[s]);
    }
    std::sort(hits.begin(), hits.end(), [&](const auto& a, const auto& b) {
      if (a.first != b.first) return index::Closer(spec_.metric, a.first, b.first);
      return a.second < b.second;
    });
    for (size_t j = 0; j < std::min(k, hits.size()); ++j) {
      r.ids[q * k + j] = hits[j].second;
      r.distances[q * k + j] = hits[j].first;
    }
  }
  return r;
}

void RecentWrites::ForEach(
    const std::function<void(uint64_t id, const float* vector, std::span<const std::byte> payload)>& fn) const {
  for (size_t s = 0; s < ids_.size(); ++s)
    fn(ids_[s], present_[s] ? rows_.data() + s * spec_.dim : nullptr, payloads_[s]);
}

void RecentWrites::Clear(size_t keep) {
  if (ids_.capacity() > keep) {
    *this = RecentWrites(spec_);
    return;
  }
  slot_of_.clear();
  ids_.clear();
  present_.clear();
  rows_.clear();
  payloads_.clear();
}

index::SearchResults MergeHits(const index::SearchResults& from_index, const index::IdSet& hidden,
                               const index::SearchResults& recent, size_t k, index::Metric metric) {
  index::SearchResults r;
  r.nq = from_index.nq;
  r.k = k;
  r.ids.assign(r.nq * k, index::kNoId);
  r.distances.assign(r.nq * k, std::numeric_limits<float>::quiet_NaN());
  for (size_t q = 0; q < r.nq; ++q) {
    size_t i = 0, j = 0, out = 0;
    const size_t ki = from_index.k, kj = recent.k;
    auto index_hit = [&] {  // the next hit of the index's that still stands, or false
      for (; i < ki; ++i) {
        const uint64_t id = from_index.ids[q * ki + i];
        if (id == index::kNoId) return false;
        if (!hidden.contains(id)) return true;
      }
      return false;
    };
    while (out < k) {
      const bool a = index_hit();
      const bool b = j < kj && recent.ids[q * kj + j] != index::kNoId;
      if (!a && !b) break;
      const bool take_index = a && (!b || !index::Closer(metric, recent.distances[q * kj + j], from_index.distances[q * ki + i]));
      if (take_index) {
        r.ids[q * k + out] = from_index.ids[q * ki + i];
        r.distances[q * k + out] = from_index.distances[q * ki + i];
        ++i;
      } else {
        r.ids[q * k + out] = recent.ids[q * kj + j];
        r.distances[q * k + out] = recent.distances[q * kj + j];
        ++j;
      }
      ++out;
    }
  }
  return r;
}

}  // namespace vecwal::recovery
