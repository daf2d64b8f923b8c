// OmpThreadCap: one OpenMP thread a query for one FAISS call.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstddef>

namespace vecwal::index {

// FAISS searches its queries in parallel, one OpenMP thread a query, and
// opens a team of every thread for each call, however few the queries: the
// others wake and find nothing to do. With one query a call from several
// threads (a server's searchers beside the store's merges) those wakes can
// cost more than the search: on our 2-core VM, two processes each running
// single-query HNSW searches beside writes and merges did not get through
// half their work in 90 s with every thread, and passed in under 30 s with
// one. This caps the calling thread's team at one thread a query for one
// FAISS call (BENCHMARKS.md, thirteenth session).
class OmpThreadCap {
 public:
  explicit OmpThreadCap(size_t queries) : saved_(omp_get_max_threads()) {
    if (queries < static_cast<size_t>(saved_)) omp_set_num_threads(static_cast<int>(std::max<size_t>(queries, 1)));
  }
  ~OmpThreadCap() { omp_set_num_threads(saved_); }
  OmpThreadCap(const OmpThreadCap&) = delete;
  OmpThreadCap& operator=(const OmpThreadCap&) = delete;

 private:
  int saved_;
};

}  // namespace vecwal::index
