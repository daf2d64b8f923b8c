// DeviceFlatStore: float32 vectors in one GPU's memory, searched exactly
// (a RowStore: see row_store.h for what each call does). Adds come from
// host memory through two pinned staging buffers, so one chunk's copy to
// the device overlaps the packing of the next, and rows given as pointers
// (the log's read buffers) are gathered straight into them.
//
// A search is one cuBLAS product per tile of rows (queries x rows, FP32, no
// TF32: distances match a CPU Flat index's to float rounding) and our own
// selection kernel, which keeps each query's k best in shared memory and
// merges into them only the candidates that beat the k-th: after the first
// few thousand rows almost none do. L2 distances are |q|^2 + |x|^2 - 2 q.x,
// clamped at 0 as FAISS does.
//
// Skipped rows go to the card as row numbers: a search without `keep`
// clears their bytes in a mask of ones kept on the card and sets them back
// after, so the search of a store with a few recent writes hidden sends a
// few bytes, not one a row.
//
// Thread safety: every method takes the store's lock; searches run one at a
// time on the store's stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "gpu/row_store.h"
#include "io/status.h"

namespace vecwal::gpu {

class DeviceFlatStore final : public RowStore {
 public:
  // The largest k a search takes: the selection keeps 2 x k candidates of a
  // query in shared memory.
  static constexpr size_t kMaxK = 2048;

  static Result<std::unique_ptr<DeviceFlatStore>> Create(int device, uint32_t dim, bool inner_product);
  ~DeviceFlatStore();
  DeviceFlatStore(const DeviceFlatStore&) = delete;
  DeviceFlatStore& operator=(const DeviceFlatStore&) = delete;

  uint32_t dim() const override;
  size_t rows() const override;
  size_t max_k() const override { return kMaxK; }
  size_t capacity() const;
  // On the card: the adds up to it never copy the whole store into a bigger
  // buffer (which holds both at once).
  Status Reserve(size_t rows) override;
  Status Append(const float* rows, size_t n) override;
  Status AppendGathered(const std::byte* const* rows, size_t n) override;
  Status MoveRows(const RowMove* moves, size_t n) override;
  Status Truncate(size_t rows) override;
  Status Search(const float* queries, size_t nq, size_t k, const RowFilter& which, float* distances,
                int64_t* rows) override;
  // Row `row` as stored, for tests and checks.
  Status ReadRow(size_t row, float* out);

 private:
  struct Impl;
  explicit DeviceFlatStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vecwal::gpu
