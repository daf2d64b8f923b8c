#include "index/faiss_search_params.h"

#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVFFastScan.h>
#include <faiss/IndexRefine.h>

#include <algorithm>
#include <climits>
#include <memory>
#include <vector>

namespace vecwal::index {

Status FaissSearchParams::Build(const faiss::Index& searched, const SearchParams& p, const std::string& description,
                                faiss::IDSelector* sel) {
  top_ = nullptr;
  least_k_ = 0;
  ivf_ef_ = 0;
  ivf_core_ = nullptr;
  pre_core_ = nullptr;
  ivf_.sel = hnsw_.sel = plain_.sel = nullptr;
  scanned_share_ = 1;
  if (p.nprobe == 0 && p.ef_search == 0 && sel == nullptr) return Status::OK();
  const std::string asked = p.nprobe == 0 && p.ef_search == 0 ? "a search filter"
                            : sel == nullptr                   ? "search options nprobe and ef_search"
                                                               : "search options nprobe and ef_search, and a filter,";
  const faiss::Index* core = &searched;
  const auto* pre = dynamic_cast<const faiss::IndexPreTransform*>(core);  // OPQ, PCA, ... in front
  if (pre != nullptr) core = pre->index;
  const auto* ivf = dynamic_cast<const faiss::IndexIVF*>(core);
  const auto* hnsw = dynamic_cast<const faiss::IndexHNSW*>(core);
  const std::string which = "'" + description + "'";
  if (dynamic_cast<const faiss::IndexRefine*>(core) != nullptr)
    return Status::InvalidArgument(asked + " cannot reach the index under a Refine in " + which +
                                   ": FAISS 1.7.3 takes no search parameters through IndexRefine");
  if (dynamic_cast<const faiss::IndexIVFFastScan*>(core) != nullptr)
    return Status::InvalidArgument(asked + " cannot reach " + which +
                                   ": FAISS 1.7.3's IVF fast scan takes no search parameters");
  if (p.nprobe != 0 && ivf == nullptr)
    return Status::InvalidArgument("search option nprobe " + std::to_string(p.nprobe) +
                                   " needs an IVF index (alone or behind a transform such as OPQ or PCA); " + which +
                                   " is not one");
  const auto* quantizer = ivf != nullptr ? dynamic_cast<const faiss::IndexHNSW*>(ivf->quantizer) : nullptr;
  if (p.ef_search != 0 && hnsw == nullptr && quantizer == nullptr)
    return Status::InvalidArgument("search option ef_search " + std::to_string(p.ef_search) +
                                   " needs an HNSW index, or an IVF index whose coarse quantizer is HNSW (alone or "
                                   "behind a transform); " + which + " is neither");
  if (p.ef_search > INT_MAX)
    return Status::InvalidArgument("search option ef_search " + std::to_string(p.ef_search) + " is over FAISS's limit " +
                                   std::to_string(INT_MAX));
  const faiss::SearchParameters* own = nullptr;
  if (hnsw != nullptr) {
    hnsw_.efSearch = p.ef_search != 0 ? static_cast<int>(p.ef_search) : hnsw->hnsw.efSearch;
    hnsw_.check_relative_distance = hnsw->hnsw.check_relative_distance;
    hnsw_.sel = sel;
    least_k_ = p.ef_search;
    scanned_share_ = 0;
    own = &hnsw_;
  } else if (ivf == nullptr) {  // a selector alone, for an index that is neither
    plain_.sel = sel;
    own = &plain_;
  } else {
    // Clamped to the lists there are, as FAISS clamps its own.
    ivf_.nprobe = std::min(p.nprobe != 0 ? p.nprobe : ivf->nprobe, ivf->nlist);
    ivf_.max_codes = ivf->max_codes;
    ivf_.sel = sel;  // not hnsw_'s below: the quantizer's lists are no ids
    scanned_share_ = static_cast<double>(ivf_.nprobe) / static_cast<double>(std::max<size_t>(ivf->nlist, 1));
    own = &ivf_;
    if (p.ef_search != 0) {  // the quantizer's; see the header
      hnsw_.efSearch = static_cast<int>(p.ef_search);
      hnsw_.check_relative_distance = quantizer->hnsw.check_relative_distance;
      ivf_ef_ = std::max(p.ef_search, ivf_.nprobe);
      ivf_core_ = ivf;
      pre_core_ = pre;
    }
  }
  if (pre != nullptr) {
    pre_.index_params = const_cast<faiss::SearchParameters*>(own);  // FAISS's field is non-const; only read
    own = &pre_;
  }
  top_ = own;
  return Status::OK();
}

// IndexIVF::search, with the quantizer asked for max(nprobe, ef_search)
// lists (so that HNSW keeps that many candidates) and its first nprobe
// probed. IndexIVF::search also splits the queries over OpenMP threads
// before it assigns them; search_preassigned splits them itself.
void FaissSearchParams::SearchIvfWithQuantizerEf(faiss::Index::idx_t n, const float* x, faiss::Index::idx_t k,
                                                 float* distances, faiss::Index::idx_t* labels) const {
  using idx_t = faiss::Index::idx_t;
  std::unique_ptr<const float[]> transformed;
  if (pre_core_ != nullptr) {
    const float* t = pre_core_->apply_chain(n, x);
    if (t != x) transformed.reset(t);
    x = t;
  }
  const auto nprobe = static_cast<idx_t>(ivf_.nprobe), wide = static_cast<idx_t>(ivf_ef_);
  std::vector<idx_t> keys(static_cast<size_t>(n * wide));
  std::vector<float> coarse(keys.size());
  ivf_core_->quantizer->search(n, x, wide, coarse.data(), keys.data(), &hnsw_);
  for (idx_t i = 1; i < n; ++i) {  // each query's first nprobe, packed (rows only move down)
    std::copy_n(keys.begin() + i * wide, nprobe, keys.begin() + i * nprobe);
    std::copy_n(coarse.begin() + i * wide, nprobe, coarse.begin() + i * nprobe);
  }
  ivf_core_->search_preassigned(n, x, k, keys.data(), coarse.data(), distances, labels, false, &ivf_);
}

}  // namespace vecwal::index
