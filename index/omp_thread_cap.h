// OmpThreadCap: one OpenMP thread a query for one FAISS call.
#pragma once

#include <algorithm>
#include <cstddef>

#include "index/vector_index.h"

namespace vecwal::index {

// FAISS searches its queries in parallel, one OpenMP thread a query, and
// opens a team of every thread for each call, however few the queries: the
// others wake and find nothing to do. With one query a call from several
// threads (a server's searchers beside the store's merges) those wakes can
// cost more than the search: on our 2-core VM, two processes each running
// single-query HNSW searches beside writes and merges did not get through
// half their work in 90 s with every thread, and passed in under 30 s with
// one. This caps the calling thread's team at one thread a query for one
// FAISS call (BENCHMARKS.md, thirteenth session): FaissThreadCap, at the
// call's queries.
class OmpThreadCap : public FaissThreadCap {
 public:
  explicit OmpThreadCap(size_t queries) : FaissThreadCap(std::max<size_t>(queries, 1)) {}
};

}  // namespace vecwal::index
