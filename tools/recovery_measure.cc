#include "tools/recovery_measure.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <thread>

#include <fmt/core.h>

#include "recovery/checkpoint_file.h"
#include "tools/crash_process.h"
#include "tools/crash_workload.h"
#include "tools/progress.h"
#include "wal/log_reader.h"
#include "wal/record_ops.h"

namespace vecwal::tools {
namespace {

namespace stdfs = std::filesystem;
using nlohmann::json;

// Flips one byte inside the log record that holds the last acknowledged
// batch: a lost acknowledged record, planted to prove the check fails.
json PlantLostRecord(const std::string& store, uint64_t acked_ops, uint64_t batch) {
  auto fsys = NewPosixFileSystem();
  auto ckpts = recovery::ListCheckpoints(*fsys, store);
  const uint64_t ckpt_lsn = ckpts.ok() && !ckpts->empty() ? ckpts->front() : 0;
  const uint64_t lo = acked_ops > batch ? acked_ops - batch : 0;
  std::optional<wal::LogRecord> found;
  auto scan = wal::ScanLog(*fsys, store + "/wal", 0, wal::RecoveryMode::kSalvage, [&](const wal::LogRecord& r) {
    if (r.type != wal::RecordType::kBatch) return Status::OK();
    auto op = wal::DecodeOp(r.type, r.payload, r.lsn);
    if (!op.ok()) return Status::OK();
    for (const auto& sub : std::get<wal::BatchOp>(*op).ops) {
      const auto* u = std::get_if<wal::UpsertOp>(&sub);
      uint64_t s = 0;
      if (!u || u->payload.size() != sizeof s) continue;
      std::memcpy(&s, u->payload.data(), sizeof s);
      if (s >= lo && s < acked_ops) found = wal::LogRecord{r.lsn, r.type, {}, r.segment_id, r.offset};
    }
    return Status::OK();
  });
  if (!scan.ok()) throw std::runtime_error("cannot plant a lost record: " + scan.status().ToString());
  if (!found) throw std::runtime_error(fmt::format("cannot plant a lost record: no record holds ops {}..{}", lo,
                                                   acked_ops - 1));
  if (found->lsn <= ckpt_lsn)
    throw std::runtime_error(fmt::format("cannot plant a lost record: LSN {} is inside the checkpoint at LSN {} "
                                         "(use --checkpoint-mib 0)",
                                         found->lsn, ckpt_lsn));
  const std::string path = store + "/wal/" + wal::SegmentFileName(found->segment_id);
  const uint64_t at = found->offset + wal::kRecordHeaderSize + 3;
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  unsigned char b = 0;
  if (fd < 0 || ::pread(fd, &b, 1, static_cast<off_t>(at)) != 1) throw std::runtime_error("cannot read " + path);
  b ^= 0x40;
  if (::pwrite(fd, &b, 1, static_cast<off_t>(at)) != 1 || ::fdatasync(fd) != 0)
    throw std::runtime_error("cannot write " + path);
  ::close(fd);
  return {{"file", path}, {"offset", found->offset}, {"lsn", found->lsn}};
}

}  // namespace

std::string ResolveDevice(const std::string& requested) {
  if (requested == "cpu" || requested == "auto") return "cpu";
  if (requested == "gpu")
    throw std::runtime_error("--device gpu: this build's durable index has no GPU backend yet; use cpu or auto");
  throw std::runtime_error("unknown device '" + requested + "' (cpu, gpu, auto)");
}

MeasureResult MeasureOnce(const MeasureConfig& c) {
  if (c.vectors == 0 || c.dim == 0 || c.batch == 0) throw std::runtime_error("--vectors, --dim, --batch must be > 0");
  const std::string device = ResolveDevice(c.device);
  (void)StoreOptions(c, "");  // rejects a bad metric or mode before any work
  const std::string store = c.dir + "/store";
  stdfs::remove_all(store);
  stdfs::create_directories(c.dir);

  // Where to kill, in acknowledged ops.
  const double per_op = static_cast<double>(4 * c.dim + 40);
  const uint64_t after_base = static_cast<uint64_t>(c.wal_mib * (1 << 20) / per_op);
  std::mt19937_64 rng(c.seed);
  uint64_t target = c.kill_at ? *c.kill_at
                   : c.random_kill ? c.vectors + std::uniform_int_distribution<uint64_t>(0, after_base)(rng)
                                   : c.vectors + after_base;

  const auto t0 = std::chrono::steady_clock::now();
  auto writer = StartWriter(c, store, 0, false);
  const pid_t pid = writer.pid;
  const int reports = writer.reports;
  uint64_t acked = 0;
  bool base_done = false, killed = false;
  {
    Progress progress("writer", target, "ops acknowledged");
    uint64_t v;
    while (::read(reports, &v, sizeof v) == sizeof v) {
      base_done |= (v & kBaseDone) != 0;
      acked = v & ~kBaseDone;
      progress.Update(acked);
      if (acked >= target && (base_done || c.kill_at)) {
        if (c.random_kill) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
        ::kill(pid, SIGKILL);
        killed = true;
        break;
      }
    }
  }
  // Reports written before the kill are still in the pipe.
  uint64_t v;
  while (::read(reports, &v, sizeof v) == sizeof v) acked = std::max(acked, v & ~kBaseDone);
  ::close(reports);
  int st = 0;
  ::waitpid(pid, &st, 0);
  if (!killed) throw std::runtime_error("the writer process ended before the kill: " + ExitDescription(st));
  const double write_s = SecondsSince(t0);

  json report;
  report["config"] = {{"vectors", c.vectors}, {"dim", c.dim},       {"index", c.index},
                      {"metric", c.metric},   {"batch", c.batch},   {"wal_mib", c.wal_mib},
                      {"checkpoint_mib", c.checkpoint_mib},         {"mode", c.mode},
                      {"device", device},     {"seed", c.seed},     {"kill_target_ops", target}};
  report["writer"] = {{"acked_ops", acked}, {"seconds", write_s}, {"killed_by", "SIGKILL"}};
  report["store"] = {{"dir", store}, {"wal_bytes", DirBytes(store + "/wal")}, {"total_bytes", DirBytes(store)}};
  {
    auto fsys = NewPosixFileSystem();
    auto ck = recovery::ListCheckpoints(*fsys, store);
    if (ck.ok() && !ck->empty())
      report["store"]["checkpoint_bytes"] = stdfs::file_size(store + "/" + recovery::CheckpointFileName(ck->front()));
  }
  if (c.plant_lost_record) report["planted_damage"] = PlantLostRecord(store, acked, c.batch);
  DropFromPageCache(store);

  json rec = TimedRestart(c, store, acked);
  MeasureResult res;
  if (rec.contains("open_error")) {
    res.problem = "recovery refused to open the store: " + rec["open_error"].get<std::string>();
    report["verify"] = {{"ok", false}, {"acked_ops", acked}, {"problem", res.problem}};
  } else {
    report["recovery"] = rec["recovery"];
    report["verify"] = rec["verify"];
    res.ok = rec["verify"]["ok"].get<bool>();
    res.problem = rec["verify"]["problem"].get<std::string>();
  }
  res.report = std::move(report);
  return res;
}

}  // namespace vecwal::tools
