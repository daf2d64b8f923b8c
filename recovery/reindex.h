// Reindex: a store's entries copied into a new store of another index
// description (a Flat store grown into IVF, a graph index traded for a
// compressed one). A store opens only with the description it was written
// with, so this is how one changes it: the ids, vectors (as Get returns
// them) and payloads go over, the new index is trained on a sample of them
// where it needs it, and the copy ends with a checkpoint of it all.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "recovery/durable_index.h"

namespace vecwal::recovery {

struct ReindexOptions {
  // Where the new index needs training: at most this many entries, drawn
  // evenly at random (reservoir sampling, `seed`), train it.
  size_t train_sample = 100'000;
  uint64_t seed = 1;
  // Entries a piece of the source's scan carries, and so one add to the new
  // index (an IVF's adds assign their vectors to lists in one BLAS product).
  size_t batch = 8192;
  // Called after each batch is in the new index, with the entries copied so
  // far: a long copy's progress (the count to compare with: the source's
  // Size). It runs inside the source's scan, so it must not call the source
  // (with copy_first it runs after the scan).
  std::function<void(uint64_t copied)> progress;
  // Copy every entry out of the source in one scan, then train and fill the
  // new index from the copy. The source's merges (and so its writers, once
  // their recent writes reach the bound) then wait only for the copy, about
  // as long as reading the vectors once, not for the new index's training
  // and adds (an IVF's, a graph's: most of a reindex's time); the price is
  // memory for a copy of every vector (and payload) until the new index is
  // built. For a store in service whose writers must not stall; a Backup of
  // it, reindexed, stalls them not at all, for the disk space of a checkpoint.
  bool copy_first = false;
  // OpenMP threads the new index's training and adds use (FAISS's own;
  // index::FaissThreadCap); 0: every core. Beside a store in service, fewer
  // leave cores to its writers and merges, and a team of every core fights
  // them for each: on our 2-core VM, beside eight writers, one thread built
  // an IVF1024 at 24.3k entries/s and two at 17.1k (BENCHMARKS.md,
  // twenty-seventh session).
  size_t threads = 0;
};

struct ReindexReport {
  uint64_t from_lsn = 0;        // the source as it was at this LSN is what was copied
  uint64_t entries = 0;         // entries copied
  uint64_t trained_on = 0;      // the training sample's size; 0: the index needed none
  uint64_t checkpoint_lsn = 0;  // the new store's one checkpoint, which holds every entry copied (LSN 1)
  // Seconds the source was scanned, its merges held back (see Reindex): its
  // writers can have waited this long at most, once at their bound.
  double scan_s = 0;
};

// Up to `cap` vectors of those offered, each offered vector equally likely
// to be among them (reservoir sampling): a training sample drawn from a
// whole scan, in one pass.
class TrainingSample {
 public:
  TrainingSample(uint32_t dim, size_t cap, uint64_t seed) : dim_(dim), cap_(cap), rng_(seed) {}
  void Offer(const float* v);
  // rows() x dim floats.
  const std::vector<float>& vectors() const { return sample_; }
  size_t rows() const { return sample_.size() / dim_; }

 private:
  uint32_t dim_;
  size_t cap_;
  std::mt19937_64 rng_;
  uint64_t offered_ = 0;
  std::vector<float> sample_;
};

// Where the new store is built: to.dir with this after it, renamed to
// to.dir once the store is complete and closed.
inline constexpr const char* kReindexingSuffix = ".reindexing";

// Copies every entry of `from` into a new store to be opened with `to`
// (to.dir empty or not there yet; to.spec.dim that of `from`'s vectors).
// The new index is trained and filled in memory and written as the store's
// one checkpoint, at LSN 1, which is read back whole: each entry is written
// once, and no log is (its log starts empty, at LSN 2). It is built in
// to.dir + kReindexingSuffix and renamed to to.dir when complete: after an
// error or a crash to.dir holds no store (the next Reindex removes what a
// crash left). to.wrap_index applies when the store is opened. `from` is scanned
// (DurableIndex::Scan), twice where the new index needs training (once with
// copy_first); its searches and writes go on meanwhile, its writes unseen,
// and they wait once its recent writes reach their bound, until the scan
// ends (with copy_first: the copy only). A store in service whose writers
// must not wait at all is reindexed from a Backup of it, opened as a store
// of its own.
Result<ReindexReport> Reindex(const DurableIndex& from, const DurableIndexOptions& to,
                              const ReindexOptions& how = {});

}  // namespace vecwal::recovery
