#include "recovery/reindex.h"

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

namespace vecwal::recovery {

void TrainingSample::Offer(const float* v) {
  const uint64_t n = offered_++;
  if (n < cap_) {
    sample_.insert(sample_.end(), v, v + dim_);
  } else if (const uint64_t j = rng_() % (n + 1); j < cap_) {
    std::copy(v, v + dim_, sample_.begin() + static_cast<std::ptrdiff_t>(j * dim_));
  }
}

namespace {

std::string Str(uint64_t v) { return std::to_string(v); }

// The dimension of a scan's piece, checked against the new store's.
Status CheckDim(const ScanPiece& p, uint32_t want) {
  if (p.vectors.size() == p.ids.size() * want) return Status::OK();
  return Status::InvalidArgument("the source's vectors have dimension " + Str(p.vectors.size() / p.ids.size()) +
                                 "; the new store's options say " + Str(want));
}

Result<std::vector<float>> Sample(const DurableIndex& from, const DurableIndexOptions& to, const ReindexOptions& how) {
  TrainingSample sample(to.spec.dim, how.train_sample, how.seed);
  auto scanned = from.Scan(how.batch, [&](const ScanPiece& p) {
    VECWAL_RETURN_IF_ERROR(CheckDim(p, to.spec.dim));
    for (size_t i = 0; i < p.ids.size(); ++i) sample.Offer(p.vectors.data() + i * to.spec.dim);
    return Status::OK();
  });
  if (!scanned.ok()) return scanned.status();
  return sample.vectors();
}

// Into `to` (a directory being built): the training, then every entry.
Status CopyInto(const DurableIndex& from, const DurableIndexOptions& to, const ReindexOptions& how,
                ReindexReport& rep) {
  VECWAL_ASSIGN_OR_RETURN(auto store, DurableIndex::Open(to));
  if (store->NeedsTraining()) {
    const std::string index = "index '" + to.spec.description + "' needs training";
    if (how.train_sample == 0) return Status::InvalidArgument(index + "; the sample is 0");
    VECWAL_ASSIGN_OR_RETURN(const auto sample, Sample(from, to, how));
    if (sample.empty()) return Status::InvalidArgument(index + " and the source is empty");
    VECWAL_RETURN_IF_ERROR(store->Train(sample));
    rep.trained_on = sample.size() / to.spec.dim;
  }
  auto copied = from.Scan(how.batch, [&](const ScanPiece& p) -> Status {
    VECWAL_RETURN_IF_ERROR(CheckDim(p, to.spec.dim));
    WriteBatch b;
    for (size_t i = 0; i < p.ids.size(); ++i)
      b.Upsert(p.ids[i], p.vectors.subspan(i * to.spec.dim, to.spec.dim), p.payloads[i]);
    if (Status s = store->Apply(b); !s.ok())
      return s.WithContext("the batch of " + Str(p.ids.size()) + " entries after the first " + Str(rep.entries) +
                           " (its first id " + Str(p.ids.front()) + ")");
    rep.entries += p.ids.size();
    if (how.progress) how.progress(rep.entries);
    return Status::OK();
  });
  if (!copied.ok()) return copied.status();
  rep.from_lsn = *copied;
  VECWAL_ASSIGN_OR_RETURN(rep.checkpoint_lsn, store->Checkpoint());
  return store->Close();
}

}  // namespace

Result<ReindexReport> Reindex(const DurableIndex& from, const DurableIndexOptions& to, const ReindexOptions& how) {
  namespace stdfs = std::filesystem;
  std::string target = stdfs::path(to.dir).lexically_normal().string();
  while (target.size() > 1 && target.back() == '/') target.pop_back();
  auto refused = [&](const std::string& why) { return Status::InvalidArgument("reindex into " + to.dir + ": " + why); };
  if (target.empty() || target == "." || target == "/") return refused("no new directory named");
  if (how.batch == 0) return refused("batches of 0 entries");
  // A store already there would take the copy on top of its own entries.
  const auto fs = to.wal.fs ? to.wal.fs : NewPosixFileSystem();
  if (std::error_code ec; stdfs::exists(target, ec)) {
    VECWAL_ASSIGN_OR_RETURN(const auto names, fs->ListDir(target));
    if (!names.empty()) return refused("the directory is not empty (it holds " + names.front() + ")");
  }
  // Built beside the target and renamed to it once closed: a crash or an
  // error never leaves a store that opens with part of the entries. A
  // directory of that name is an earlier reindex's, cut short.
  DurableIndexOptions building = to;
  building.dir = target + kReindexingSuffix;
  std::error_code ec;
  stdfs::remove_all(building.dir, ec);
  if (ec) return refused("cannot remove " + building.dir + ", left by an earlier reindex: " + ec.message());
  ReindexReport rep;
  Status s = CopyInto(from, building, how, rep);
  if (s.ok()) s = fs->Rename(building.dir, target);
  if (!s.ok()) {
    stdfs::remove_all(building.dir, ec);
    return s.WithContext("reindex into " + to.dir);
  }
  const auto parent = stdfs::path(target).parent_path();
  VECWAL_RETURN_IF_ERROR(fs->SyncDir(parent.empty() ? "." : parent.string()));
  return rep;
}

}  // namespace vecwal::recovery
