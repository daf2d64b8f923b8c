// vecwal-inspect: what is in a vecwal directory, like pg_waldump.
//
// Read-only, always: it opens every file without write access and takes no
// lock, so it is safe on a directory a live process holds. What it reads
// there is a moment's view: a live writer's newest flush may look torn.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <variant>

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "io/file_system.h"
#include "recovery/checkpoint_file.h"
#include "wal/log_reader.h"
#include "wal/log_seal.h"
#include "wal/record_ops.h"
#include "wal/segment_files.h"

namespace {

using namespace vecwal;
using nlohmann::json;
namespace stdfs = std::filesystem;

// A store directory holds checkpoints beside its log in `wal/`; a bare log
// directory holds segments only. A store that a Backup or a Reindex made
// has no `wal/` until it is first opened: its log is empty.
struct Layout {
  std::string log_dir;
  std::optional<std::string> store_dir;
  bool log_exists = true;
};

Layout Locate(const std::string& dir) {
  if (stdfs::is_directory(dir + "/wal")) return {dir + "/wal", dir};
  std::error_code ec;
  for (const auto& e : stdfs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (recovery::ParseCheckpointFileName(name) || name == recovery::kCheckpointCopyDir)
      return {dir + "/wal", dir, false};
  }
  return {dir, std::nullopt};
}

// The log's records, or none where the store has no log yet.
Result<wal::LogScanReport> ScanLogOf(FileSystem& fs, const Layout& l, uint64_t from, wal::RecoveryMode mode,
                                     const wal::RecordVisitor& visit) {
  if (!l.log_exists) return wal::LogScanReport{};
  return wal::ScanLog(fs, l.log_dir, from, mode, visit);
}

Result<std::vector<wal::SegmentFileInfo>> SegmentFilesOf(FileSystem& fs, const Layout& l) {
  if (!l.log_exists) return std::vector<wal::SegmentFileInfo>{};
  return wal::ListSegmentFiles(fs, l.log_dir);
}

const char* StateName(wal::SegmentFileInfo::State s) {
  switch (s) {
    case wal::SegmentFileInfo::State::kLive: return "live";
    case wal::SegmentFileInfo::State::kBlank: return "blank";
    case wal::SegmentFileInfo::State::kDamaged: return "damaged";
  }
  return "?";
}

[[noreturn]] void Fail(const std::string& what) {
  fmt::print(stderr, "vecwal-inspect: {}\n", what);
  std::exit(2);
}

template <typename T>
T OrFail(Result<T> r) {
  if (!r.ok()) Fail(r.status().ToString());
  return std::move(r).value();
}

// --- segments ---------------------------------------------------------------

struct SegmentRange {
  uint64_t first = 0, last = 0, records = 0, end = 0;
};

int Segments(FileSystem& fs, const Layout& l, bool as_json) {
  auto files = OrFail(SegmentFilesOf(fs, l));
  std::map<uint64_t, SegmentRange> ranges;
  // Salvage so that damage in one segment does not hide the ones after it.
  auto rep = OrFail(ScanLogOf(fs, l, 0, wal::RecoveryMode::kSalvage, [&](const wal::LogRecord& r) {
    auto& s = ranges[r.segment_id];
    if (s.records++ == 0) s.first = r.lsn;
    s.last = r.lsn;
    s.end = r.offset + wal::RecordFootprint(r.payload.size());
    return Status::OK();
  }));
  json out = json::array();
  for (const auto& f : files) {
    json j{{"id", f.id}, {"file", f.path}, {"state", StateName(f.state)}, {"file_bytes", f.file_bytes}};
    if (f.state == wal::SegmentFileInfo::State::kLive) {
      j["header_first_lsn"] = f.header.first_lsn;
      j["epoch"] = f.header.epoch;
      j["block_size"] = f.header.block_size;
      j["created_unix_ns"] = f.header.created_unix_ns;
    }
    if (auto it = ranges.find(f.id); it != ranges.end()) {
      j["first_lsn"] = it->second.first;
      j["last_lsn"] = it->second.last;
      j["records"] = it->second.records;
      j["used_bytes"] = it->second.end;
    } else {
      j["records"] = 0;
    }
    if (!f.problem.empty()) j["problem"] = f.problem;
    out.push_back(std::move(j));
  }
  auto seal = OrFail(wal::LogSeal::Open(fs, l.log_dir));
  if (as_json) {
    std::cout << json{{"log_dir", l.log_dir}, {"segments", out}, {"first_lsn", rep.first_lsn},
                      {"last_lsn", rep.last_lsn}, {"sealed_lsn", seal->sealed_lsn()}}.dump(2)
              << "\n";
    return 0;
  }
  fmt::print("log {}: LSNs {}..{}, {} live segment(s), sealed through LSN {}{}\n\n", l.log_dir, rep.first_lsn,
             rep.last_lsn, rep.live_segments, seal->sealed_lsn(), seal->note().empty() ? "" : " (" + seal->note() + ")");
  fmt::print("{:>6} {:<8} {:>12} {:>12} {:>10} {:>12} {:>12}  {}\n", "id", "state", "first LSN", "last LSN", "records",
             "used bytes", "file bytes", "file");
  for (const auto& j : out) {
    auto num = [&](const char* k) { return j.contains(k) ? std::to_string(j[k].get<uint64_t>()) : std::string("-"); };
    fmt::print("{:>6} {:<8} {:>12} {:>12} {:>10} {:>12} {:>12}  {}\n", j["id"].get<uint64_t>(),
               j["state"].get<std::string>(), num("first_lsn"), num("last_lsn"), num("records"), num("used_bytes"),
               num("file_bytes"), stdfs::path(j["file"].get<std::string>()).filename().string());
    if (j.contains("problem")) fmt::print("       problem: {}\n", j["problem"].get<std::string>());
  }
  return 0;
}

// --- dump -------------------------------------------------------------------

struct DumpFilter {
  uint64_t from = 0, to = UINT64_MAX;
  std::string type;
  std::optional<uint64_t> id;
  uint64_t limit = UINT64_MAX;
};

// What a record says, and whether it touches `id`.
json Describe(const wal::LogRecord& r, const std::optional<uint64_t>& id, bool* matches) {
  json j{{"lsn", r.lsn},        {"type", wal::ToString(r.type)}, {"segment", r.segment_id},
         {"offset", r.offset}, {"bytes", r.payload.size()}};
  *matches = !id.has_value();
  auto op = wal::DecodeOp(r.type, r.payload, r.lsn);
  if (!op.ok()) {
    j["problem"] = op.status().ToString();
    return j;
  }
  auto touch = [&](uint64_t x) {
    if (id && *id == x) *matches = true;
  };
  std::visit(
      [&](const auto& o) {
        using T = std::decay_t<decltype(o)>;
        if constexpr (std::is_same_v<T, wal::UpsertOp>) {
          j["id"] = o.id;
          j["dim"] = o.vector.size();
          j["payload_bytes"] = o.payload.size();
          touch(o.id);
        } else if constexpr (std::is_same_v<T, wal::DeleteOp>) {
          j["id"] = o.id;
          touch(o.id);
        } else if constexpr (std::is_same_v<T, wal::BatchOp>) {
          json ops = json::array();
          for (const auto& b : o.ops) {
            if (const auto* u = std::get_if<wal::UpsertOp>(&b)) {
              ops.push_back({{"op", "upsert"}, {"id", u->id}});
              touch(u->id);
            } else {
              const auto& d = std::get<wal::DeleteOp>(b);
              ops.push_back({{"op", "delete"}, {"id", d.id}});
              touch(d.id);
            }
          }
          j["ops"] = std::move(ops);
        } else if constexpr (std::is_same_v<T, wal::CheckpointMarkerOp>) {
          j["checkpoint_lsn"] = o.checkpoint_lsn;
          j["checkpoint_file"] = o.file_name;
        }
      },
      *op);
  return j;
}

int Dump(FileSystem& fs, const Layout& l, const DumpFilter& f, bool as_json) {
  uint64_t shown = 0;
  json all = json::array();
  if (!as_json)
    fmt::print("{:>12} {:<8} {:>6} {:>12} {:>8}  {}\n", "LSN", "type", "seg", "offset", "bytes", "what");
  auto rep = ScanLogOf(fs, l, f.from, wal::RecoveryMode::kSalvage, [&](const wal::LogRecord& r) {
    if (r.lsn < f.from || r.lsn > f.to || shown >= f.limit) return Status::OK();
    if (!f.type.empty() && f.type != wal::ToString(r.type)) return Status::OK();
    bool matches = false;
    json j = Describe(r, f.id, &matches);
    if (!matches) return Status::OK();
    ++shown;
    if (as_json) {
      all.push_back(std::move(j));
      return Status::OK();
    }
    std::string what;
    if (j.contains("id")) what += fmt::format("id {}", j["id"].get<uint64_t>());
    if (j.contains("dim")) what += fmt::format(" dim {} payload {} B", j["dim"].get<size_t>(),
                                              j["payload_bytes"].get<size_t>());
    if (j.contains("ops")) what += fmt::format("{} ops", j["ops"].size());
    if (j.contains("checkpoint_lsn"))
      what += fmt::format("checkpoint at LSN {} ({})", j["checkpoint_lsn"].get<uint64_t>(),
                          j["checkpoint_file"].get<std::string>());
    if (j.contains("problem")) what += " PROBLEM: " + j["problem"].get<std::string>();
    fmt::print("{:>12} {:<8} {:>6} {:>12} {:>8}  {}\n", r.lsn, wal::ToString(r.type), r.segment_id, r.offset,
               r.payload.size(), what);
    return Status::OK();
  });
  if (!rep.ok()) Fail(rep.status().ToString());
  if (as_json) std::cout << json{{"records", all}}.dump(2) << "\n";
  else fmt::print("({} record(s) shown)\n", shown);
  return 0;
}

// --- checkpoints and verify -----------------------------------------------------

json CheckpointJson(FileSystem& fs, const std::string& path) {
  json j{{"file", path}};
  auto rep = recovery::VerifyCheckpoint(fs, path);
  if (!rep.ok()) {
    j["problem"] = rep.status().ToString();
    return j;
  }
  const auto& i = rep->info;
  j["lsn"] = i.lsn;
  j["dim"] = i.spec.dim;
  j["metric"] = index::ToString(i.spec.metric);
  j["index"] = i.spec.description;
  j["vectors"] = i.live_count;
  j["payloads"] = i.payload_count;
  j["file_bytes"] = i.file_bytes;
  json secs = json::array();
  for (const auto& s : rep->sections) {
    json sj;
    sj["name"] = s.name;
    sj["offset"] = s.offset;
    sj["length"] = s.length;
    sj["crc32c"] = s.crc;
    if (!s.problem.empty()) {
      sj["problem"] = s.problem;
      j["problem"] = s.problem;
    }
    secs.push_back(std::move(sj));
  }
  j["sections"] = std::move(secs);
  return j;
}

json AllCheckpoints(FileSystem& fs, const Layout& l) {
  json out = json::array();
  if (!l.store_dir) return out;
  std::vector<std::string> names;
  for (const auto& e : stdfs::directory_iterator(*l.store_dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    if (recovery::ParseCheckpointFileName(n)) out.push_back(CheckpointJson(fs, *l.store_dir + "/" + n));
    else if (n.size() > 4 && n.ends_with(".tmp"))
      out.push_back({{"file", *l.store_dir + "/" + n}, {"note", "unfinished checkpoint (a crash mid-write); ignored"}});
    else if (n == recovery::kSpareCheckpointName)
      out.push_back({{"file", *l.store_dir + "/" + n}, {"note", "retired checkpoint file, to be overwritten by the next checkpoint; never read"}});
  }
  // The second copy a repair keeps (recovery::kCheckpointCopyDir): recovery
  // reads it where no checkpoint above verifies, so it is judged as they are.
  const std::string copies = *l.store_dir + "/" + recovery::kCheckpointCopyDir;
  if (stdfs::is_directory(copies)) {
    std::vector<std::string> held;
    for (const auto& e : stdfs::directory_iterator(copies)) held.push_back(e.path().filename().string());
    std::sort(held.begin(), held.end());
    for (const auto& n : held)
      if (recovery::ParseCheckpointFileName(n)) out.push_back(CheckpointJson(fs, copies + "/" + n));
  }
  return out;
}

void PrintCheckpoint(const json& c) {
  const stdfs::path file = c["file"].get<std::string>();
  std::string name = file.filename().string();
  if (file.parent_path().filename() == recovery::kCheckpointCopyDir) name = file.parent_path().filename().string() + "/" + name;
  if (c.contains("note")) {
    fmt::print("{}: {}\n", name, c["note"].get<std::string>());
    return;
  }
  if (!c.contains("lsn")) {
    fmt::print("{}: PROBLEM {}\n", name, c["problem"].get<std::string>());
    return;
  }
  fmt::print("{}: LSN {}, {} x {}-d {} ({}), {} payloads, {} bytes\n", name, c["lsn"].get<uint64_t>(),
             c["vectors"].get<uint64_t>(), c["dim"].get<uint32_t>(), c["index"].get<std::string>(),
             c["metric"].get<std::string>(), c["payloads"].get<uint64_t>(), c["file_bytes"].get<uint64_t>());
  for (const auto& s : c["sections"])
    fmt::print("    section {:<9} offset {:>12} length {:>12} crc32c {:08x}  {}\n", s["name"].get<std::string>(),
               s["offset"].get<uint64_t>(), s["length"].get<uint64_t>(), s["crc32c"].get<uint32_t>(),
               s.contains("problem") ? "PROBLEM: " + s["problem"].get<std::string>() : std::string("ok"));
}

int Checkpoints(FileSystem& fs, const Layout& l, bool as_json) {
  if (!l.store_dir) Fail(l.log_dir + " is a bare log directory: it holds no checkpoints");
  json all = AllCheckpoints(fs, l);
  if (as_json) std::cout << json{{"checkpoints", all}}.dump(2) << "\n";
  else if (all.empty()) fmt::print("no checkpoints in {}\n", *l.store_dir);
  else for (const auto& c : all) PrintCheckpoint(c);
  return 0;
}

// Every problem in the directory, each with its file, offset and LSNs. Exit
// status 1 when there is any.
int Verify(FileSystem& fs, const Layout& l, bool as_json) {
  json problems = json::array();
  // Salvage reports every damaged stretch rather than stopping at the first.
  uint64_t records = 0, bytes = 0;
  auto rep = ScanLogOf(fs, l, 0, wal::RecoveryMode::kSalvage, [&](const wal::LogRecord& r) {
    ++records;
    bytes += r.payload.size();
    if (auto op = wal::DecodeOp(r.type, r.payload, r.lsn); !op.ok())
      problems.push_back({{"file", l.log_dir + "/" + wal::SegmentFileName(r.segment_id)},
                          {"offset", r.offset},
                          {"first_lsn", r.lsn},
                          {"last_lsn", r.lsn},
                          {"problem", op.status().ToString()}});
    return Status::OK();
  });
  if (!rep.ok()) Fail(rep.status().ToString());
  for (const auto& d : rep->dropped) {
    // `where` is "<file> offset <n>", or the file alone for a whole segment.
    std::string file = d.where;
    std::optional<uint64_t> offset;
    if (auto k = d.where.rfind(" offset "); k != std::string::npos) {
      file = d.where.substr(0, k);
      offset = std::stoull(d.where.substr(k + 8));
    }
    json p{{"file", file}, {"first_lsn", d.first_lsn}, {"last_lsn", d.last_lsn}, {"problem", d.reason}};
    if (offset) p["offset"] = *offset;
    problems.push_back(std::move(p));
  }
  // What the default recovery mode would do with the same bytes: it loads
  // the newest checkpoint that verifies and reads the log only after it. A
  // newer one that does not verify holds nothing recovery can use.
  json checkpoints = AllCheckpoints(fs, l);
  std::optional<uint64_t> loaded;
  bool any_checkpoint = false;
  for (const auto& c : checkpoints) {
    if (c.contains("note")) continue;  // unfinished or retired: never read
    any_checkpoint = true;
    if (c.contains("lsn") && !c.contains("problem")) loaded = std::max(loaded.value_or(0), c["lsn"].get<uint64_t>());
  }
  const uint64_t from = loaded ? *loaded + 1 : 0;
  std::string verdict;
  auto tolerate = ScanLogOf(fs, l, from, wal::RecoveryMode::kTolerateTail,
                               [](const wal::LogRecord&) { return Status::OK(); });
  // The seal (wal/log_seal.h) names LSNs acknowledged for certain: a log
  // that ends below it lost them, whatever its end looks like.
  auto seal = OrFail(wal::LogSeal::Open(fs, l.log_dir));
  const uint64_t sealed = seal->sealed_lsn();
  const auto lost = tolerate.ok() ? seal->FirstLost(tolerate->last_lsn, from) : std::nullopt;
  if (lost)
    problems.push_back({{"file", seal->path()}, {"first_lsn", *lost}, {"last_lsn", sealed},
                        {"problem", "acknowledged (sealed) but not in the log, which ends at LSN " +
                                        std::to_string(tolerate->last_lsn)}});
  if (!seal->note().empty()) problems.push_back({{"file", seal->path()}, {"offset", 0}, {"problem", seal->note()}});
  if (any_checkpoint && !loaded) verdict = "recovery refuses to open: no checkpoint verifies";
  else if (!tolerate.ok()) verdict = "recovery (tolerate_tail) refuses to open: " + tolerate.status().ToString();
  else if (lost)
    verdict = "recovery (tolerate_tail) refuses to open: LSNs up to " + std::to_string(sealed) +
              " were acknowledged (" + seal->path() + ") but the log ends at LSN " + std::to_string(tolerate->last_lsn);
  else if (tolerate->tail_cut) verdict = "recovery (tolerate_tail) cuts a torn tail: " + tolerate->tail_note;
  else verdict = "recovery (tolerate_tail) reads every record" + (from > 0 ? " after LSN " + std::to_string(from - 1) : "");
  if (loaded)
    for (auto& p : problems)
      if (p.contains("last_lsn") && p["last_lsn"].get<uint64_t>() < from)
        p["note"] = "below checkpoint LSN " + std::to_string(*loaded) + ", which recovery loads and which holds its ops";
  for (const auto& c : checkpoints)
    if (c.contains("problem"))
      for (const auto& s : c.value("sections", json::array()))
        if (s.contains("problem"))
          problems.push_back({{"file", c["file"]}, {"offset", s["offset"]}, {"lsn", c["lsn"]},
                              {"problem", s["problem"]}});
  for (const auto& c : checkpoints)
    if (c.contains("problem") && !c.contains("sections"))
      problems.push_back({{"file", c["file"]}, {"offset", 0}, {"problem", c["problem"]}});

  if (as_json) {
    std::cout << json{{"log_dir", l.log_dir},    {"records", records},     {"payload_bytes", bytes},
                      {"first_lsn", rep->first_lsn}, {"last_lsn", rep->last_lsn}, {"problems", problems},
                      {"checkpoints", checkpoints},   {"recovery", verdict},     {"ok", problems.empty()}}
                     .dump(2)
              << "\n";
  } else {
    fmt::print("log {}: {} records verified (LSNs {}..{}, {} payload bytes)\n", l.log_dir, records, rep->first_lsn,
               rep->last_lsn, bytes);
    for (const auto& c : checkpoints) PrintCheckpoint(c);
    fmt::print("{}\n", verdict);
    if (problems.empty()) fmt::print("OK: every checksum verifies\n");
    for (const auto& p : problems) {
      std::string lsns = p.contains("first_lsn") ? fmt::format(" LSNs {}..{}", p["first_lsn"].get<uint64_t>(),
                                                               p["last_lsn"].get<uint64_t>())
                         : p.contains("lsn")     ? fmt::format(" checkpoint LSN {}", p["lsn"].get<uint64_t>())
                                                 : std::string();
      fmt::print("PROBLEM {} offset {}{}: {}{}\n", p["file"].get<std::string>(),
                 p.contains("offset") ? std::to_string(p["offset"].get<uint64_t>()) : std::string("-"), lsns,
                 p["problem"].get<std::string>(), p.contains("note") ? " (" + p["note"].get<std::string>() + ")" : "");
    }
  }
  return problems.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vecwal-inspect: list, dump and verify a vecwal log or store directory (read-only, lock-free)"};
  app.require_subcommand(1);
  app.fallthrough();  // --json may also follow the subcommand
  bool as_json = false;
  app.add_flag("--json", as_json, "print JSON instead of tables");
  std::string dir;
  auto add_dir = [&](CLI::App* s) { s->add_option("dir", dir, "store directory (with wal/) or log directory")->required(); };
  auto* seg = app.add_subcommand("segments", "segment files: state, LSN range, records, bytes");
  add_dir(seg);
  DumpFilter f;
  auto* dump = app.add_subcommand("dump", "records: LSN, type, segment, offset, id, size");
  add_dir(dump);
  dump->add_option("--from", f.from, "first LSN");
  dump->add_option("--to", f.to, "last LSN");
  dump->add_option("--type", f.type, "upsert, delete, batch, checkpoint or opaque");
  dump->add_option("--id", f.id, "only records that touch this id");
  dump->add_option("--limit", f.limit, "at most this many records");
  auto* verify = app.add_subcommand("verify", "check every CRC of log and checkpoints; exit 1 on any problem");
  add_dir(verify);
  auto* ck = app.add_subcommand("checkpoints", "checkpoint headers and sections");
  add_dir(ck);
  CLI11_PARSE(app, argc, argv);

  if (!stdfs::is_directory(dir)) Fail(dir + ": no such directory");
  auto fs = NewPosixFileSystem();
  Layout l = Locate(dir);
  // A mistyped path would otherwise verify as an empty log, "OK".
  if (!l.store_dir) {
    auto files = OrFail(wal::ListSegmentFiles(*fs, l.log_dir));
    if (files.empty() && !stdfs::exists(l.log_dir + "/LOCK"))
      Fail(dir + " is no vecwal store (no wal/ directory) and no log (no wal-*.log segment files)");
  }
  if (seg->parsed()) return Segments(*fs, l, as_json);
  if (dump->parsed()) return Dump(*fs, l, f, as_json);
  if (verify->parsed()) return Verify(*fs, l, as_json);
  return Checkpoints(*fs, l, as_json);
}
