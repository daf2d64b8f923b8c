#include "recovery/reindex.h"

#include <algorithm>
#include <string>
#include <vector>

namespace vecwal::recovery {
namespace {

std::string Str(uint64_t v) { return std::to_string(v); }

// The dimension of a scan's piece, checked against the new store's.
Status CheckDim(const ScanPiece& p, uint32_t want, const std::string& to) {
  if (p.vectors.size() == p.ids.size() * want) return Status::OK();
  return Status::InvalidArgument("reindex into " + to + ": the source's vectors have dimension " +
                                 Str(p.vectors.size() / p.ids.size()) + "; the new store's options say " + Str(want));
}

Result<std::vector<float>> Sample(const DurableIndex& from, const DurableIndexOptions& to, const ReindexOptions& how) {
  TrainingSample sample(to.spec.dim, how.train_sample, how.seed);
  auto scanned = from.Scan(how.batch, [&](const ScanPiece& p) {
    VECWAL_RETURN_IF_ERROR(CheckDim(p, to.spec.dim, to.dir));
    for (size_t i = 0; i < p.ids.size(); ++i) sample.Offer(p.vectors.data() + i * to.spec.dim);
    return Status::OK();
  });
  if (!scanned.ok()) return scanned.status();
  return sample.vectors();
}

}  // namespace

void TrainingSample::Offer(const float* v) {
  const uint64_t n = offered_++;
  if (n < cap_) {
    sample_.insert(sample_.end(), v, v + dim_);
  } else if (const uint64_t j = rng_() % (n + 1); j < cap_) {
    std::copy(v, v + dim_, sample_.begin() + static_cast<std::ptrdiff_t>(j * dim_));
  }
}

Result<ReindexReport> Reindex(const DurableIndex& from, const DurableIndexOptions& to, const ReindexOptions& how) {
  auto refused = [&](const std::string& why) { return Status::InvalidArgument("reindex into " + to.dir + ": " + why); };
  if (to.dir.empty()) return refused("no directory named");
  if (how.batch == 0) return refused("batches of 0 entries");
  // A store already there would take the copy on top of its own entries.
  const auto fs = to.wal.fs ? to.wal.fs : NewPosixFileSystem();
  VECWAL_RETURN_IF_ERROR(fs->CreateDir(to.dir));
  VECWAL_ASSIGN_OR_RETURN(const auto names, fs->ListDir(to.dir));
  if (!names.empty()) return refused("the directory is not empty (it holds " + names.front() + ")");
  VECWAL_ASSIGN_OR_RETURN(auto store, DurableIndex::Open(to));
  ReindexReport rep;
  if (store->NeedsTraining()) {
    if (how.train_sample == 0) return refused("index '" + to.spec.description + "' needs training; the sample is 0");
    VECWAL_ASSIGN_OR_RETURN(const auto sample, Sample(from, to, how));
    if (sample.empty()) return refused("index '" + to.spec.description + "' needs training and the source is empty");
    VECWAL_RETURN_IF_ERROR(store->Train(sample));
    rep.trained_on = sample.size() / to.spec.dim;
  }
  WriteBatch b;
  auto copied = from.Scan(how.batch, [&](const ScanPiece& p) -> Status {
    VECWAL_RETURN_IF_ERROR(CheckDim(p, to.spec.dim, to.dir));
    b = WriteBatch();
    for (size_t i = 0; i < p.ids.size(); ++i)
      b.Upsert(p.ids[i], p.vectors.subspan(i * to.spec.dim, to.spec.dim), p.payloads[i]);
    if (Status s = store->Apply(b); !s.ok())
      return s.WithContext("reindex into " + to.dir + ": the batch of " + Str(p.ids.size()) +
                           " entries after the first " + Str(rep.entries) + " (its first id " + Str(p.ids.front()) + ")");
    rep.entries += p.ids.size();
    return Status::OK();
  });
  if (!copied.ok()) return copied.status();
  rep.from_lsn = *copied;
  VECWAL_ASSIGN_OR_RETURN(rep.checkpoint_lsn, store->Checkpoint());
  VECWAL_RETURN_IF_ERROR(store->Close());
  return rep;
}

}  // namespace vecwal::recovery
