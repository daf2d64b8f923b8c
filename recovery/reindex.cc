#include "recovery/reindex.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "index/vector_index.h"
#include "recovery/checkpoint_file.h"

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

// from.Scan, its time added to rep.scan_s.
Result<uint64_t> TimedScan(const DurableIndex& from, size_t piece, const ScanVisitor& visit, ReindexReport& rep) {
  const auto t0 = std::chrono::steady_clock::now();
  auto lsn = from.Scan(piece, visit);
  rep.scan_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return lsn;
}

Result<std::vector<float>> Sample(const DurableIndex& from, const DurableIndexOptions& to, const ReindexOptions& how,
                                  ReindexReport& rep) {
  TrainingSample sample(to.spec.dim, how.train_sample, how.seed);
  auto scanned = TimedScan(from, how.batch, [&](const ScanPiece& p) {
    VECWAL_RETURN_IF_ERROR(CheckDim(p, to.spec.dim));
    for (size_t i = 0; i < p.ids.size(); ++i) sample.Offer(p.vectors.data() + i * to.spec.dim);
    return Status::OK();
  }, rep);
  if (!scanned.ok()) return scanned.status();
  return sample.vectors();
}

// The new store's one checkpoint, which holds the whole copy as its one op.
constexpr uint64_t kCopyLsn = 1;

// Where a batch of `n` entries stands in the copy, for its errors.
std::string Where(size_t n, uint64_t before, uint64_t first_id) {
  return "the batch of " + Str(n) + " entries after the first " + Str(before) + " (its first id " + Str(first_id) +
         ")";
}
std::string Where(const ScanPiece& p, uint64_t before) { return Where(p.ids.size(), before, p.ids.front()); }

// A piece's payloads, checked against the new store's cap, into `out`.
Status TakePayloads(const ScanPiece& p, uint64_t before, size_t cap, Payloads& out) {
  for (size_t i = 0; i < p.ids.size(); ++i) {
    const auto& pl = p.payloads[i];
    if (pl.size() > cap)
      return Status::InvalidArgument("id " + Str(p.ids[i]) + ": payload of " + Str(pl.size()) +
                                     " bytes exceeds the new store's cap of " + Str(cap))
          .WithContext(Where(p, before));
    if (!pl.empty()) out.emplace_hint(out.end(), p.ids[i], std::vector<std::byte>(pl.begin(), pl.end()));
  }
  return Status::OK();
}

// Trains `idx`, which needs it, on `sample` (drawn from the source).
Status TrainOn(index::VectorIndex& idx, const DurableIndexOptions& to, std::span<const float> sample,
               ReindexReport& rep) {
  if (sample.empty())
    return Status::InvalidArgument("index '" + to.spec.description + "' needs training and the source is empty");
  VECWAL_RETURN_IF_ERROR(idx.Train(sample));
  rep.trained_on = sample.size() / to.spec.dim;
  return Status::OK();
}

// The new index filled straight from the scan: the source's merges wait
// for the adds.
Status FillWhileScanning(const DurableIndex& from, const DurableIndexOptions& to, const ReindexOptions& how,
                         index::VectorIndex& idx, Payloads& payloads, ReindexReport& rep) {
  if (!idx.is_trained()) {
    VECWAL_ASSIGN_OR_RETURN(const auto sample, Sample(from, to, how, rep));
    VECWAL_RETURN_IF_ERROR(TrainOn(idx, to, sample, rep));
  }
  idx.Reserve(from.Size());  // a hint: writes to the source go on, unseen
  auto copied = TimedScan(from, how.batch, [&](const ScanPiece& p) -> Status {
    VECWAL_RETURN_IF_ERROR(CheckDim(p, to.spec.dim));
    VECWAL_RETURN_IF_ERROR(TakePayloads(p, rep.entries, to.max_payload_bytes, payloads));
    if (Status s = idx.Add(p.ids, p.vectors); !s.ok()) return s.WithContext(Where(p, rep.entries));
    rep.entries += p.ids.size();
    if (how.progress) how.progress(rep.entries);
    return Status::OK();
  }, rep);
  if (!copied.ok()) return copied.status();
  rep.from_lsn = *copied;
  return Status::OK();
}

// ReindexOptions::copy_first: one scan copies every entry (and draws the
// sample), then the index is trained and filled from the copy.
Status FillFromCopy(const DurableIndex& from, const DurableIndexOptions& to, const ReindexOptions& how,
                    index::VectorIndex& idx, Payloads& payloads, ReindexReport& rep) {
  const uint32_t dim = to.spec.dim;
  std::vector<uint64_t> ids;
  std::vector<float> vectors;
  const size_t expect = from.Size();  // a hint, as above
  ids.reserve(expect);
  vectors.reserve(expect * dim);
  auto copied = TimedScan(from, how.batch, [&](const ScanPiece& p) -> Status {
    VECWAL_RETURN_IF_ERROR(CheckDim(p, dim));
    VECWAL_RETURN_IF_ERROR(TakePayloads(p, ids.size(), to.max_payload_bytes, payloads));
    ids.insert(ids.end(), p.ids.begin(), p.ids.end());
    vectors.insert(vectors.end(), p.vectors.begin(), p.vectors.end());
    return Status::OK();
  }, rep);
  if (!copied.ok()) return copied.status();
  rep.from_lsn = *copied;
  // The sample is drawn from the copy once the source is let go, in scan
  // order as the other way draws it; a sample as big as the copy is the copy.
  if (!idx.is_trained() && how.train_sample >= ids.size()) {
    VECWAL_RETURN_IF_ERROR(TrainOn(idx, to, vectors, rep));
  } else if (!idx.is_trained()) {
    TrainingSample sample(dim, how.train_sample, how.seed);
    for (size_t i = 0; i < ids.size(); ++i) sample.Offer(vectors.data() + i * dim);
    VECWAL_RETURN_IF_ERROR(TrainOn(idx, to, sample.vectors(), rep));
  }
  idx.Reserve(ids.size());
  for (size_t at = 0; at < ids.size(); at += how.batch) {
    const size_t n = std::min(how.batch, ids.size() - at);
    if (Status s = idx.Add(std::span(ids).subspan(at, n), std::span(vectors).subspan(at * dim, n * dim)); !s.ok())
      return s.WithContext(Where(n, at, ids[at]));
    rep.entries += n;
    if (how.progress) how.progress(rep.entries);
  }
  return Status::OK();
}

// Into `to` (a directory being built): the new index, trained and filled in
// memory from the source's scan, then written as the store's checkpoint at
// kCopyLsn and read back whole. Nothing goes through a log: until the
// rename the directory is no store, so a crash loses nothing acknowledged,
// and each entry is written once (through the new store's log, then its
// checkpoint, it was written twice, and applied one batch a write).
Status CopyInto(const DurableIndex& from, const DurableIndexOptions& to, const ReindexOptions& how, FileSystem& fs,
                ReindexReport& rep) {
  VECWAL_ASSIGN_OR_RETURN(auto idx, index::NewFaissIndex(to.spec));
  // A knob the new index has no part for would be refused at its first Open.
  if (to.search.nprobe != 0 || to.search.ef_search != 0) VECWAL_RETURN_IF_ERROR(idx->CheckSearchParams(to.search));
  if (!idx->is_trained() && how.train_sample == 0)
    return Status::InvalidArgument("index '" + to.spec.description + "' needs training; the sample is 0");
  Payloads payloads;
  VECWAL_RETURN_IF_ERROR(how.copy_first ? FillFromCopy(from, to, how, *idx, payloads, rep)
                                        : FillWhileScanning(from, to, how, *idx, payloads, rep));
  VECWAL_ASSIGN_OR_RETURN(const std::string path, WriteCheckpoint(fs, to.dir, kCopyLsn, *idx, payloads));
  rep.checkpoint_lsn = kCopyLsn;
  // Read back before the store is named: it is the copy's only one.
  idx.reset();
  payloads.clear();
  auto check = VerifyCheckpoint(fs, path);
  if (!check.ok()) return check.status().WithContext("the new store's checkpoint, read back");
  if (!check->ok()) return Status::Corruption(path + ", read back: " + check->problems());
  return Status::OK();
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
  // Built beside the target and renamed to it once complete: a crash or an
  // error never leaves a store that opens with part of the entries.
  DurableIndexOptions building = to;
  building.dir = target + kReindexingSuffix;
  if (Status made = fs->CreateDir(building.dir); !made.ok()) return made.WithContext("reindex into " + to.dir);
  // Held until the store is named: a second reindex into the same target is
  // refused, not built over this one.
  auto held = fs->LockDir(building.dir, 0);
  if (!held.ok()) return held.status().WithContext("reindex into " + to.dir);
  // Anything else there is an earlier reindex's, cut short.
  std::error_code ec;
  auto left = fs->ListDir(building.dir);
  if (!left.ok()) return left.status().WithContext("reindex into " + to.dir);
  for (const auto& name : *left)
    if (name != "LOCK" && (stdfs::remove_all(building.dir + "/" + name, ec), ec))
      return refused("cannot remove " + building.dir + "/" + name + ", left by an earlier reindex: " + ec.message());
  ReindexReport rep;
  const index::FaissThreadCap cap(how.threads);
  Status s = CopyInto(from, building, how, *fs, rep);
  if (s.ok()) s = fs->Rename(building.dir, target);
  if (!s.ok()) {
    stdfs::remove_all(building.dir, ec);
    return s.WithContext("reindex into " + to.dir);
  }
  held->reset();
  const auto parent = stdfs::path(target).parent_path();
  VECWAL_RETURN_IF_ERROR(fs->SyncDir(parent.empty() ? "." : parent.string()));
  return rep;
}

}  // namespace vecwal::recovery
