// DurableIndexImpl's maintenance: Scrub (every checkpoint and log record
// read back and checked) and Backup.
#include "recovery/durable_index_impl.h"

#include <algorithm>
#include <filesystem>

namespace vecwal::recovery {

Result<ScrubReport> DurableIndexImpl::Scrub() {
  ScrubReport rep;
  auto no_generation = [&](uint64_t lsn) { NoGenerationLocked(lsn); };  // retired by the repair
  {
    std::lock_guard c(ckpt_mu_);  // no checkpoint retired, and no log released, under the reads
    if (!wal_) return Status::Unavailable(opts_.dir + " is closed");
    const uint64_t durable = wal_->durable_lsn();  // past it, a flush in flight may look torn
    VECWAL_ASSIGN_OR_RETURN(auto lsns, ListCheckpoints(*fs_, opts_.dir));
    for (uint64_t l : lsns) {
      const std::string path = opts_.dir + "/" + CheckpointFileName(l);
      auto v = VerifyCheckpoint(*fs_, path);
      std::vector<std::string> found;
      if (!v.ok()) found.push_back(v.status().ToString());
      else
        for (const auto& sec : v->sections)
          if (!sec.problem.empty()) found.push_back(sec.problem);
      if (found.empty()) {
        ++rep.checkpoints_verified;
        continue;
      }
      rep.problems.insert(rep.problems.end(), found.begin(), found.end());
      no_generation(l);
    }
    // The copy a repair left is read back too; a damaged one is removed, and
    // the repair writes it anew.
    const std::string copies = opts_.dir + "/" + kCheckpointCopyDir;
    if (auto listed = ListCheckpoints(*fs_, copies); listed.ok()) {
      for (uint64_t l : *listed) {
        const std::string path = copies + "/" + CheckpointFileName(l);
        auto v = VerifyCheckpoint(*fs_, path);
        const std::string problem = v.ok() ? v->problems() : v.status().ToString();
        if (problem.empty()) {
          ++rep.checkpoints_verified;
          continue;
        }
        rep.problems.push_back(problem);
        (void)fs_->Remove(path);
        checkpoint_copy_wanted_ = true;
      }
    }
    const uint64_t from = lsns.empty() ? 1 : lsns.back() + 1;
    auto scan = wal::ScanLog(*fs_, opts_.dir + "/wal", from, wal::RecoveryMode::kSalvage, [&](const wal::LogRecord& r) {
      rep.log_records_verified += r.lsn <= durable;
      return Status::OK();
    });
    if (!scan.ok()) return scan.status().WithContext("scrubbing " + opts_.dir + "/wal");
    uint64_t first_damaged = ~0ull;
    for (const auto& d : scan->dropped)
      if (d.first_lsn <= durable) {
        rep.problems.push_back(d.where + ": LSNs " + std::to_string(d.first_lsn) + " to " +
                               std::to_string(d.last_lsn) + ": " + d.reason);
        first_damaged = std::min(first_damaged, d.first_lsn);
      }
    // Damage to the newest records reads as a torn tail, which salvage cuts
    // without a dropped range; here every LSN up to `durable` is known
    // acknowledged.
    if (scan->last_lsn < durable) {
      rep.problems.push_back(opts_.dir + "/wal: LSNs " + std::to_string(scan->last_lsn + 1) + " to " +
                             std::to_string(durable) + " are acknowledged but the log ends before them" +
                             (scan->tail_cut ? ": " + scan->tail_note : ""));
      first_damaged = std::min(first_damaged, scan->last_lsn + 1);
    }
    if (rep.problems.empty()) return rep;
    // A checkpoint below damaged log records is no generation either: an Open
    // from it would replay into the damage. The repair retires it, so that
    // the log kept starts past the damage, not at a checkpoint that needs it.
    for (uint64_t l : lsns)
      if (l < first_damaged) no_generation(l);
    // Written even with nothing logged since the newest checkpoint: it is
    // what retires the damaged ones (and replaces the newest, if that is one).
    checkpoint_on_disk_ = false;
  }
  VECWAL_ASSIGN_OR_RETURN(rep.repaired_at_lsn, Checkpoint());
  return rep;
}

Result<BackupInfo> DurableIndexImpl::Backup(const std::string& dest) {
  auto refused = [&](const std::string& why) { return Status::InvalidArgument("backup to " + dest + ": " + why); };
  if (dest.empty()) return refused("no directory named");
  VECWAL_RETURN_IF_ERROR(fs_->CreateDir(dest));
  VECWAL_ASSIGN_OR_RETURN(const auto names, fs_->ListDir(dest));
  // The lock file alone is what a backup that failed leaves, and holds nothing.
  for (const auto& n : names)
    if (n != "LOCK") return refused("the directory is not empty (it holds " + n + ")");
  // Held until the copy is named, so that no Open makes a store there meanwhile.
  VECWAL_ASSIGN_OR_RETURN(const auto dest_lock, fs_->LockDir(dest, 0));
  const auto parent = std::filesystem::path(dest).parent_path();
  VECWAL_RETURN_IF_ERROR(fs_->SyncDir(parent.empty() ? "." : parent.string()));  // dest's own entry
  std::lock_guard c(ckpt_mu_);  // the checkpoint copied is not retired under the copy
  if (!wal_) return Status::Unavailable(opts_.dir + " is closed");
  for (int attempt = 0;; ++attempt) {
    VECWAL_ASSIGN_OR_RETURN(const uint64_t lsn, CheckpointLocked());
    const std::string from = opts_.dir + "/" + CheckpointFileName(lsn);
    auto copied = CopyCheckpoint(*fs_, from, dest, LogPacing());
    if (!copied.ok()) {
      // Damage found in the store's own file, which Open would have fallen
      // back from: it is no generation, and is written anew to be copied.
      if (copied.status().code() != Status::Code::kCorruption || attempt > 0)
        return copied.status().WithContext("backup of " + opts_.dir + " to " + dest);
      NoGenerationLocked(lsn);
      checkpoint_on_disk_ = false;
      continue;
    }
    // Read back: a device may store other bytes than it acknowledged.
    BackupInfo info{lsn, copied->file_bytes, dest + "/" + CheckpointFileName(lsn)};
    auto v = VerifyCheckpoint(*fs_, info.path);
    const std::string problem = v.ok() ? v->problems() : "";
    if (v.ok() && problem.empty()) return info;
    (void)fs_->Remove(info.path);
    if (!v.ok() && v.status().code() != Status::Code::kCorruption)
      return v.status().WithContext("backup of " + opts_.dir + " to " + dest + ": reading the copy back");
    return Status::Corruption("backup of " + opts_.dir + " to " + dest +
                              ": the copy read back wrong: " + (v.ok() ? problem : v.status().ToString()));
  }
}

}  // namespace vecwal::recovery
