#include <faiss/utils/distances.h>

#include "index/vector_index.h"

namespace vecwal::index {

void ExactDistances(const IndexSpec& spec, std::span<const float> queries, std::span<const float> rows,
                    std::span<float> out) {
  const size_t dim = spec.dim;
  const size_t nq = queries.size() / dim, n = rows.size() / dim;
  for (size_t q = 0; q < nq; ++q) {
    const float* x = queries.data() + q * dim;
    float* o = out.data() + q * n;
    if (spec.metric == Metric::kInnerProduct)
      faiss::fvec_inner_products_ny(o, x, rows.data(), dim, n);
    else
      faiss::fvec_L2sqr_ny(o, x, rows.data(), dim, n);
  }
}

}  // namespace vecwal::index
