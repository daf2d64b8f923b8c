#include <faiss/utils/distances.h>

#include <algorithm>
#include <limits>

#include "index/omp_thread_cap.h"
#include "index/vector_index.h"

namespace vecwal::index {

void ExactKnn(const IndexSpec& spec, std::span<const float> queries, std::span<const float> rows, size_t k,
              std::span<float> distances, std::span<int64_t> found) {
  const size_t dim = spec.dim;
  const size_t nq = queries.size() / dim, n = rows.size() / dim;
  if (nq == 0 || k == 0) return;
  if (n == 0) {
    std::fill_n(found.begin(), nq * k, int64_t{-1});
    std::fill_n(distances.begin(), nq * k, std::numeric_limits<float>::quiet_NaN());
    return;
  }
  const OmpThreadCap cap(nq);
  // FAISS's heaps fill every place, those past n with row -1.
  if (spec.metric == Metric::kInnerProduct)
    faiss::knn_inner_product(queries.data(), rows.data(), dim, nq, n, k, distances.data(), found.data());
  else
    faiss::knn_L2sqr(queries.data(), rows.data(), dim, nq, n, k, distances.data(), found.data());
}

}  // namespace vecwal::index
