// RowStore: dense float32 rows searched exactly, which gpu/'s mirrored index
// keeps its copy of a Flat index in. DeviceFlatStore is the card's; tests
// give the mirror one in host memory, so that what the mirror does with ids
// and rows is checked where no card is.
//
// Rows are dense (0..rows()-1): a caller that removes a row moves the last
// one into its place (MoveRow, then Truncate) and keeps its own row -> id
// table. No CUDA types and no C++20 here: nvcc compiles this as C++17.
#pragma once

#include <cstddef>
#include <cstdint>

#include "io/status.h"

namespace vecwal::gpu {

class RowStore {
 public:
  virtual ~RowStore() = default;
  virtual uint32_t dim() const = 0;
  virtual size_t rows() const = 0;
  // The largest k Search takes.
  virtual size_t max_k() const = 0;
  // Storage for `rows` in all, so that the adds up to it never move it.
  virtual Status Reserve(size_t rows) = 0;
  // Appends n rows of dim floats, contiguous in host memory.
  virtual Status Append(const float* rows, size_t n) = 0;
  // Appends n rows, row i at rows[i] (dim floats, any alignment).
  virtual Status AppendGathered(const std::byte* const* rows, size_t n) = 0;
  // Row `to` becomes a copy of row `from`.
  virtual Status MoveRow(size_t from, size_t to) = 0;
  // Drops the rows from `rows` on.
  virtual Status Truncate(size_t rows) = 0;
  // The k nearest rows to each of nq queries (nq x dim host floats): row
  // numbers (-1 where fewer than k rows pass) and distances (NaN there;
  // squared L2, or the inner product), nq x k each, best first. `mask`
  // (null: every row) holds a byte a row, nonzero for the rows to search.
  virtual Status Search(const float* queries, size_t nq, size_t k, const uint8_t* mask, float* distances,
                        int64_t* rows) = 0;
};

}  // namespace vecwal::gpu
