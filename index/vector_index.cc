// VectorIndex's own methods (the defaults a backend may override) and the
// checks every backend shares.
#include "index/vector_index.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace vecwal::index {

const char* ToString(Metric m) { return m == Metric::kL2 ? "l2" : "ip"; }

Status VectorIndex::AddRows(std::span<const uint64_t> ids, std::span<const std::byte* const> rows) {
  if (rows.size() != ids.size())
    return Status::InvalidArgument("add of " + std::to_string(ids.size()) + " ids with " +
                                   std::to_string(rows.size()) + " vectors");
  const size_t bytes = size_t{spec().dim} * sizeof(float);
  std::vector<float> packed(rows.size() * spec().dim);
  for (size_t i = 0; i < rows.size(); ++i) std::memcpy(packed.data() + i * spec().dim, rows[i], bytes);
  return Add(ids, packed);
}

Status VectorIndex::ScanLive(size_t, const LiveVisitor&) const {
  return Status::NotSupported("index '" + spec().description + "' cannot list its vectors");
}

Status VectorIndex::Compact() {
  VECWAL_ASSIGN_OR_RETURN(auto c, BeginCompaction());
  if (c == nullptr) return Status::OK();
  for (;;) {
    VECWAL_ASSIGN_OR_RETURN(bool more, c->CopyNext());
    if (!more) break;
    VECWAL_RETURN_IF_ERROR(c->AddCopied());
  }
  return FinishCompaction(std::move(c));
}

Result<Metric> ParseMetric(const std::string& s) {
  if (s == "l2" || s == "L2") return Metric::kL2;
  if (s == "ip" || s == "inner_product") return Metric::kInnerProduct;
  return Status::InvalidArgument("unknown metric '" + s + "' (l2, ip)");
}

Status CheckFinite(std::span<const float> rows, size_t dim, const std::function<std::string(size_t row)>& name) {
  for (size_t i = 0; i < rows.size(); ++i)
    if (!std::isfinite(rows[i]))
      return Status::InvalidArgument(name(i / dim) + ": component " + std::to_string(i % dim) + " is " +
                                     (std::isnan(rows[i]) ? "NaN" : "infinite"));
  return Status::OK();
}

Status CheckResultSize(size_t nq, size_t k) {
  static const uint64_t memory =
      static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  constexpr size_t kHitBytes = sizeof(uint64_t) + sizeof(float);
  size_t bytes = 0;
  if (__builtin_mul_overflow(nq, k, &bytes) || __builtin_mul_overflow(bytes, kHitBytes, &bytes) || bytes > memory)
    return Status::InvalidArgument("k = " + std::to_string(k) + " for " + std::to_string(nq) +
                                   " queries: their results would take more than this machine's " +
                                   std::to_string(memory) + " bytes of memory");
  return Status::OK();
}

}  // namespace vecwal::index
