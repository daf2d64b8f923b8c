// The workload vecwal-recovery crashes, and the check that nothing
// acknowledged was lost.
//
// Op s (0, 1, 2, ...) is a pure function of s and of the ops before it, so a
// verifier rebuilds the exact state any prefix of ops leaves without the
// writer's memory: op s < N upserts id s; op s >= N upserts id Mix(s) % N,
// or removes it when s % 8 == 7 and it is present. Every upsert carries
// VectorFor(s) and, as its payload, s (8 bytes, little-endian). Ops go to
// the store in atomic batches of a fixed size, so a crash leaves a prefix
// of whole batches.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "recovery/durable_index.h"

namespace vecwal::tools {

class CrashModel {
 public:
  static constexpr uint64_t kAbsent = ~0ull;
  CrashModel(uint64_t vectors, size_t dim) : dim_(dim), last_(vectors, kAbsent) {}

  struct Op {
    uint64_t s = 0, id = 0;
    bool remove = false;
  };
  Op Next();                  // the next op, applied to the model
  uint64_t ops() const { return next_; }
  uint64_t live() const { return live_; }
  uint64_t vectors() const { return last_.size(); }
  // The op that last upserted each id, or kAbsent.
  const std::vector<uint64_t>& last() const { return last_; }
  void VectorFor(uint64_t s, std::span<float> out) const;
  size_t dim() const { return dim_; }

 private:
  size_t dim_;
  std::vector<uint64_t> last_;
  uint64_t next_ = 0, live_ = 0;
};

// Appends the next `n` ops of `m` to `b`.
void NextBatch(CrashModel& m, uint64_t n, recovery::WriteBatch& b);

struct VerifyResult {
  bool ok = false;
  uint64_t acked_ops = 0;      // the writer saw these acknowledged
  uint64_t recovered_ops = 0;  // the prefix the store holds (when ok)
  std::string problem;         // the first difference, naming the id
};

// Checks that `store` holds exactly the state of some prefix of whole
// batches of at least `acked_ops` ops, allowing `max_unacked_batches` batches
// that were in flight (durable but not yet reported) at the crash. Vectors
// are compared exactly unless `exact_vectors` is false (lossy encodings such
// as PQ); ids and payloads always are.
VerifyResult VerifyPrefix(const recovery::DurableIndex& store, uint64_t vectors, size_t dim, uint64_t batch,
                          uint64_t acked_ops, uint64_t max_unacked_batches, bool exact_vectors);

}  // namespace vecwal::tools
