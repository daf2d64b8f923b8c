#include "index/faiss_search_params.h"

#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVFFastScan.h>
#include <faiss/IndexRefine.h>

#include <climits>

namespace vecwal::index {

Status FaissSearchParams::Build(const faiss::Index& searched, const SearchParams& p, const std::string& description) {
  top_ = nullptr;
  least_k_ = 0;
  if (p.nprobe == 0 && p.ef_search == 0) return Status::OK();
  const faiss::Index* core = &searched;
  const auto* pre = dynamic_cast<const faiss::IndexPreTransform*>(core);  // OPQ, PCA, ... in front
  if (pre != nullptr) core = pre->index;
  const auto* ivf = dynamic_cast<const faiss::IndexIVF*>(core);
  const auto* hnsw = dynamic_cast<const faiss::IndexHNSW*>(core);
  const std::string which = "'" + description + "'";
  if (dynamic_cast<const faiss::IndexRefine*>(core) != nullptr)
    return Status::InvalidArgument("search options nprobe and ef_search cannot reach the index under a Refine in " +
                                   which + ": FAISS 1.7.3 takes no search parameters through IndexRefine");
  if (dynamic_cast<const faiss::IndexIVFFastScan*>(core) != nullptr)
    return Status::InvalidArgument("search option nprobe " + std::to_string(p.nprobe) + " cannot reach " + which +
                                   ": FAISS 1.7.3's IVF fast scan takes no search parameters");
  if (p.nprobe != 0 && ivf == nullptr)
    return Status::InvalidArgument("search option nprobe " + std::to_string(p.nprobe) +
                                   " needs an IVF index (alone or behind a transform such as OPQ or PCA); " + which +
                                   " is not one");
  // An IVF's HNSW quantizer is searched for nprobe lists, and FAISS 1.7.3
  // keeps max(its efSearch, nprobe) candidates there whatever the
  // parameters say: an ef_search for it would be silently lost.
  if (p.ef_search != 0 && ivf != nullptr && dynamic_cast<const faiss::IndexHNSW*>(ivf->quantizer) != nullptr)
    return Status::InvalidArgument("search option ef_search " + std::to_string(p.ef_search) + " cannot reach the HNSW "
                                   "quantizer of " + which + " (FAISS 1.7.3 keeps max(its efSearch, nprobe) "
                                   "candidates there): raise nprobe instead");
  if (p.ef_search != 0 && hnsw == nullptr)
    return Status::InvalidArgument("search option ef_search " + std::to_string(p.ef_search) +
                                   " needs an HNSW index (alone or behind a transform); " + which + " is not one");
  if (p.ef_search > INT_MAX)
    return Status::InvalidArgument("search option ef_search " + std::to_string(p.ef_search) + " is over FAISS's limit " +
                                   std::to_string(INT_MAX));
  const faiss::SearchParameters* own = nullptr;
  if (hnsw != nullptr) {
    hnsw_.efSearch = static_cast<int>(p.ef_search);
    hnsw_.check_relative_distance = hnsw->hnsw.check_relative_distance;
    least_k_ = p.ef_search;
    own = &hnsw_;
  } else {
    // FAISS clamps an nprobe over the lists it has, as it does its own.
    ivf_.nprobe = p.nprobe;
    ivf_.max_codes = ivf->max_codes;
    own = &ivf_;
  }
  if (pre != nullptr) {
    pre_.index_params = const_cast<faiss::SearchParameters*>(own);  // FAISS's field is non-const; only read
    own = &pre_;
  }
  top_ = own;
  return Status::OK();
}

}  // namespace vecwal::index
