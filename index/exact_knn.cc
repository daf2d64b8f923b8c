#include <faiss/impl/IDSelector.h>
#include <faiss/utils/distances.h>

#include <algorithm>
#include <limits>
#include <optional>

#include "index/omp_thread_cap.h"
#include "index/vector_index.h"

namespace vecwal::index {
namespace {

struct RowMask final : faiss::IDSelector {
  explicit RowMask(std::span<const uint8_t> m) : mask(m) {}
  bool is_member(idx_t row) const override { return mask[static_cast<size_t>(row)] != 0; }
  std::span<const uint8_t> mask;
};

}  // namespace

void ExactKnn(const IndexSpec& spec, std::span<const float> queries, std::span<const float> rows, size_t k,
              std::span<float> distances, std::span<int64_t> found, std::span<const uint8_t> only) {
  const size_t dim = spec.dim;
  const size_t nq = queries.size() / dim, n = rows.size() / dim;
  if (nq == 0 || k == 0) return;
  if (n == 0) {
    std::fill_n(found.begin(), nq * k, int64_t{-1});
    std::fill_n(distances.begin(), nq * k, std::numeric_limits<float>::quiet_NaN());
    return;
  }
  const OmpThreadCap cap(nq);
  std::optional<RowMask> sel;
  if (!only.empty()) sel.emplace(only.first(n));
  const faiss::IDSelector* s = sel ? &*sel : nullptr;
  // FAISS's heaps fill every place, those past n (or past the rows searched) with row -1.
  if (spec.metric == Metric::kInnerProduct)
    faiss::knn_inner_product(queries.data(), rows.data(), dim, nq, n, k, distances.data(), found.data(), s);
  else
    faiss::knn_L2sqr(queries.data(), rows.data(), dim, nq, n, k, distances.data(), found.data(), nullptr, s);
}

}  // namespace vecwal::index
