// FaissSearchParams: vecwal's SearchParams as FAISS's per-call search
// parameters, for the index an IndexIDMap2 wraps (or the IVF index itself).
//
// Per call, not set on the index (ParameterSpace::set_index_parameters): the
// index is shared by every searcher, and one caller's nprobe must not leak
// into another's search or race with it. FAISS 1.7.3 takes parameters in
// IndexIVF (SearchParametersIVF), IndexHNSW (SearchParametersHNSW) and
// IndexPreTransform (SearchParametersPreTransform around the others);
// IndexIDMap2, IndexRefine and IndexIVFFastScan refuse any (and so any
// selector: SearchParameters::sel, which Flat, SQ, HNSW and IVF honour), so the caller
// searches under the id map and translates its labels, and the other two get
// a clear error.
//
// FAISS 1.7.3's HNSW sizes its candidate list from its own efSearch and k
// (the larger), not from the parameters' efSearch, which only its stop rule
// reads: alone, a per-call efSearch of 512 changed no result (our test). The
// walk does not depend on k, only which hits are kept, so a search for k
// with efSearch e is the first k hits of one for max(k, e): the caller asks
// FAISS for least_k() hits at least.
//
// An IVF's HNSW quantizer is searched for nprobe lists, so there the same
// trick needs the quantizer asked for max(nprobe, ef_search) lists: where
// ef_search is given for one, the caller searches through
// SearchIvfWithQuantizerEf instead of the index's own search.
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

  // Sets the parameters for a search of `searched`, with `sel` (null: none)
  // as the selector of the index that holds the vectors (never a coarse
  // quantizer's). InvalidArgument, naming the knob and `description`, where
  // `searched` has no part it applies to.
  Status Build(const faiss::Index& searched, const SearchParams& p, const std::string& description,
               faiss::IDSelector* sel = nullptr);
  // Null where every knob was left at 0 and there is no selector: search as FAISS would.
  const faiss::SearchParameters* get() const { return top_; }
  // The fewest hits to ask FAISS for (see above); 0: no floor.
  size_t least_k() const { return least_k_; }
  // About the share of the vectors one query's search compares (asks a
  // selector of): all for a flat scan, nprobe of nlist for IVF, few (0
  // here) for a graph. Set where Build had a selector.
  double scanned_share() const { return scanned_share_; }
  // Whether searches go through SearchIvfWithQuantizerEf.
  bool ivf_quantizer_ef() const { return ivf_core_ != nullptr; }
  // IndexIVF::search of the IVF index (behind its transform, if any) with the
  // quantizer's candidates at ef_search; labels are the IVF's own.
  void SearchIvfWithQuantizerEf(faiss::Index::idx_t n, const float* x, faiss::Index::idx_t k, float* distances,
                                faiss::Index::idx_t* labels) const;

 private:
  faiss::SearchParametersIVF ivf_;
  faiss::SearchParametersHNSW hnsw_;
  faiss::SearchParametersPreTransform pre_;
  faiss::SearchParameters plain_;  // a selector alone
  const faiss::SearchParameters* top_ = nullptr;
  size_t least_k_ = 0;
  double scanned_share_ = 1;
  size_t ivf_ef_ = 0;  // lists asked of the quantizer
  const faiss::IndexIVF* ivf_core_ = nullptr;
  const faiss::IndexPreTransform* pre_core_ = nullptr;
};

}  // namespace vecwal::index
