// RecentWrites: the writes made visible since the store last merged them into
// its index, by id: each id's net effect (its vector and payload now, or
// deleted), which hides whatever the index holds for that id.
//
// Why it exists: an apply needs the index exclusively, and beside searches
// that means waiting for the query in progress, tens of milliseconds for one
// query of a big Flat index here. Writers beside two searchers ran at 2% of
// their speed alone. Writers now apply here instead, under a lock that a
// search holds only to scan these few vectors exactly, and the store merges
// them into the index (one Remove, then gather adds in short steps) when they
// reach a bound, off the writers' path, reading them from a set it has set
// aside while writers fill a new one.
//
// Thread safety: none of its own; the owner locks it (shared for the const
// methods, exclusive for Apply and Clear).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "index/id_table.h"
#include "index/vector_index.h"
#include "wal/record_ops.h"

namespace vecwal::recovery {

class RecentWrites {
 public:
  explicit RecentWrites(const index::IndexSpec& spec) : spec_(spec) {}

  // Upserts and deletes; a batch's ops in order. The op passed validation:
  // its vector has spec.dim components.
  void Apply(const wal::Op& op);

  // Ids with an entry, deleted ones included.
  size_t size() const { return ids_.size(); }
  bool empty() const { return ids_.empty(); }

  struct Found {
    bool present = false;  // false: deleted since the merge
    std::span<const float> vector;
    std::span<const std::byte> payload;
  };
  // Nothing when the id was not written since the merge: the index answers.
  std::optional<Found> Find(uint64_t id) const;

  // Every id with an entry, each once.
  std::span<const uint64_t> ids() const { return ids_; }

  // The k present entries closest to each query (nq x dim floats), best
  // first, ties by id (at the k-th place, FAISS's choice among the tied);
  // rows short of k end in kNoId. Only the ids `only` lets through, where
  // it sets a filter or a list of ids (the rest of it is the index's).
  index::SearchResults Search(std::span<const float> queries, size_t k, const index::SearchParams& only = {}) const;

  // Each entry once, for the merge: present ones with their vector (dim
  // floats) and payload, deleted ones with none.
  void ForEach(const std::function<void(uint64_t id, const float* vector, std::span<const std::byte> payload)>& fn) const;

  // Empties it, keeping its memory for the next writes up to `keep` ids (a
  // big batch's is given back).
  void Clear(size_t keep);

 private:
  void Upsert(const wal::UpsertOp& u);
  void Remove(uint64_t id);
  size_t SlotFor(uint64_t id);

  index::IndexSpec spec_;
  index::IdMap<uint32_t> slot_of_;
  std::vector<uint64_t> ids_;  // by slot
  std::vector<uint8_t> present_;
  std::vector<float> rows_;  // slot x dim; a deleted slot's row is stale
  std::vector<std::vector<std::byte>> payloads_;
};

// One search's hits: the index's (`from_index`, which may list ids that
// `hidden` marks, whose entries the recent writes replace) merged with the
// recent writes' own, best first, k a query. Both inputs are best first.
index::SearchResults MergeHits(const index::SearchResults& from_index, const index::IdSet& hidden,
                               const index::SearchResults& recent, size_t k, index::Metric metric);

}  // namespace vecwal::recovery
