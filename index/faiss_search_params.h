// FaissSearchParams: vecwal's SearchParams as FAISS's per-call search
// parameters, for the index an IndexIDMap2 wraps (or the IVF index itself).
//
// Per call, not set on the index (ParameterSpace::set_index_parameters): the
// index is shared by every searcher, and one caller's nprobe must not leak
// into another's search or race with it. FAISS 1.7.3 takes parameters in
// IndexIVF (SearchParametersIVF), IndexHNSW (SearchParametersHNSW) and
// IndexPreTransform (SearchParametersPreTransform around the others);
// IndexIDMap2, IndexRefine and IndexIVFFastScan refuse any, so the caller
// searches under the id map and translates its labels, and the other two get
// a clear error.
//
// FAISS 1.7.3's HNSW sizes its candidate list from its own efSearch and k
// (the larger), not from the parameters' efSearch, which only its stop rule
// reads: alone, a per-call efSearch of 512 changed no result (our test). The
// walk does not depend on k, only which hits are kept, so a search for k
// with efSearch e is the first k hits of one for max(k, e): the caller asks
// FAISS for least_k() hits at least.
#pragma once

#include <faiss/Index.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/impl/HNSW.h>

#include <string>

#include "index/vector_index.h"

namespace vecwal::index {

class FaissSearchParams {
 public:
  FaissSearchParams() = default;
  // The members point at each other: built in place, never copied.
  FaissSearchParams(const FaissSearchParams&) = delete;
  FaissSearchParams& operator=(const FaissSearchParams&) = delete;

  // Sets the parameters for a search of `searched`. InvalidArgument, naming
  // the knob and `description`, where `searched` has no part it applies to.
  Status Build(const faiss::Index& searched, const SearchParams& p, const std::string& description);
  // Null where every knob was left at 0: search as FAISS would.
  const faiss::SearchParameters* get() const { return top_; }
  // The fewest hits to ask FAISS for (see above); 0: no floor.
  size_t least_k() const { return least_k_; }

 private:
  faiss::SearchParametersIVF ivf_;
  faiss::SearchParametersHNSW hnsw_;
  faiss::SearchParametersPreTransform pre_;
  const faiss::SearchParameters* top_ = nullptr;
  size_t least_k_ = 0;
};

}  // namespace vecwal::index
