// `vecwal-recovery estimate DIR`: how long a restart of an existing store
// would take here, from its sizes and this machine's measured rates.
//
// The store is only read (no lock, no write): its newest checkpoint's header
// and size, and its log tail after that checkpoint, scanned once to count the
// bytes replay would read. The rates come from a calibration crash of a
// small store with the same index in a scratch directory. The prediction is
// linear in bytes; indices whose insert cost grows with their size (HNSW)
// make it a lower bound. Beside it, the worst case for the store's options:
// a crash with its log at the limit where writers wait, which bounds what a
// restart replays.
#include <filesystem>
#include <stdexcept>

#include <fmt/core.h>

#include "recovery/checkpoint_file.h"
#include "tools/recovery_measure.h"
#include "wal/log_reader.h"

namespace vecwal::tools {

nlohmann::json RunEstimate(const EstimateConfig& c) {
  namespace stdfs = std::filesystem;
  auto fsys = NewPosixFileSystem();
  auto lsns = recovery::ListCheckpoints(*fsys, c.dir);
  if (!lsns.ok()) throw std::runtime_error(lsns.status().ToString());
  if (lsns->empty()) throw std::runtime_error(c.dir + ": no checkpoint, so no index description to estimate from");
  const std::string ckpt = c.dir + "/" + recovery::CheckpointFileName(lsns->front());
  auto info = recovery::ReadCheckpointInfo(*fsys, ckpt);
  if (!info.ok()) throw std::runtime_error(info.status().ToString());
  uint64_t tail_bytes = 0, tail_records = 0;
  // A store a Backup or a Reindex made has no wal/ until it is first opened: no tail.
  wal::LogScanReport tail;
  if (std::error_code ec; stdfs::exists(c.dir + "/wal", ec)) {
    auto scan = wal::ScanLog(*fsys, c.dir + "/wal", info->lsn + 1, wal::RecoveryMode::kTolerateTail,
                             [&](const wal::LogRecord& r) {
                               if (r.lsn > info->lsn) {
                                 tail_bytes += r.payload.size();
                                 ++tail_records;
                               }
                               return Status::OK();
                             });
    if (!scan.ok()) throw std::runtime_error(scan.status().ToString());
    tail = *scan;
  }

  MeasureConfig m;
  m.dir = c.scratch + "/vecwal-estimate-" + std::to_string(::getpid());
  m.vectors = c.calibration_vectors;
  m.dim = info->spec.dim;
  m.index = info->spec.description;
  m.metric = info->spec.metric == index::Metric::kInnerProduct ? "ip" : "l2";
  m.wal_mib = c.calibration_wal_mib;
  fmt::print(stderr, "  calibrating: a crash and restart of {} x {}-d {} in {} ...\n", m.vectors, m.dim, m.index,
             m.dir);
  MeasureResult cal;
  try {
    cal = MeasureOnce(m);
  } catch (...) {
    stdfs::remove_all(m.dir);
    throw;
  }
  stdfs::remove_all(m.dir);
  if (!cal.ok) throw std::runtime_error("calibration run failed its own check: " + cal.problem);
  // Reading is paid per segment byte read (whole segments), decoding and
  // applying per record byte replayed.
  const auto& r = cal.report["recovery"];
  auto rate = [](double bytes, double s) { return bytes / std::max(1e-6, s); };
  const double load_rate = rate(cal.report["store"].value("checkpoint_bytes", 0.0), r["checkpoint_load_s"].get<double>());
  const double read_rate = rate(r["log_bytes_read"].get<double>(), r["log_read_s"].get<double>());
  const double apply_rate =
      rate(r["log_bytes_replayed"].get<double>(), r["decode_s"].get<double>() + r["apply_s"].get<double>());
  const double fixed_s = std::max(0.0, r["first_search_s"].get<double>() - r["open_s"].get<double>());
  const double load_s = static_cast<double>(info->file_bytes) / load_rate;
  const double read_s = static_cast<double>(tail.bytes_read) / read_rate;
  const double apply_s = static_cast<double>(tail_bytes) / apply_rate;
  // The worst case: a crash with the log at its limit. The limit counts
  // records with their headers, so reading and replaying it as such
  // overstates both a little; the checkpoint is the present one (a store
  // that grows loads a bigger one).
  nlohmann::json worst = nullptr;
  const uint64_t limit_bytes = (c.checkpoint_every_mib << 20) * c.stall_intervals;
  if (limit_bytes != 0) {
    const double worst_read_s = static_cast<double>(limit_bytes) / read_rate;
    const double worst_apply_s = static_cast<double>(limit_bytes) / apply_rate;
    worst = {{"log_limit_bytes", limit_bytes}, {"checkpoint_load_s", load_s}, {"log_read_s", worst_read_s},
             {"replay_s", worst_apply_s}, {"first_search_s", fixed_s},
             {"total_s", load_s + worst_read_s + worst_apply_s + fixed_s}};
  }
  return {{"dir", c.dir},
          {"checkpoint", {{"file", ckpt}, {"lsn", info->lsn}, {"bytes", info->file_bytes},
                          {"vectors", info->live_count}, {"index", info->spec.description}, {"dim", info->spec.dim}}},
          {"log_tail", {{"records", tail_records}, {"bytes", tail_bytes}, {"segment_bytes_read", tail.bytes_read},
                        {"last_lsn", tail.last_lsn}}},
          {"rates", {{"checkpoint_load_bytes_per_s", load_rate}, {"log_read_bytes_per_s", read_rate},
                     {"replay_bytes_per_s", apply_rate}, {"calibration_vectors", m.vectors}}},
          {"predicted", {{"checkpoint_load_s", load_s}, {"log_read_s", read_s}, {"replay_s", apply_s},
                         {"first_search_s", fixed_s}, {"total_s", load_s + read_s + apply_s + fixed_s}}},
          {"worst_case", worst}};
}

}  // namespace vecwal::tools
