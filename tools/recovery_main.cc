// vecwal-recovery: how long a restart takes, measured after a real crash,
// swept over configurations, or estimated for an existing store.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "tools/recovery_measure.h"

using namespace vecwal::tools;
using nlohmann::json;

namespace {

void PrintMeasure(std::FILE* o, const MeasureResult& res) {
  const auto& j = res.report;
  const auto& cfg = j["config"];
  fmt::print(o, "crash and restart: {} x {}-d {} ({}), {} ops per batch, device {}\n", cfg["vectors"].get<uint64_t>(),
             cfg["dim"].get<size_t>(), cfg["index"].get<std::string>(), cfg["metric"].get<std::string>(),
             cfg["batch"].get<uint64_t>(), cfg["device"].get<std::string>());
  fmt::print(o, "writer: {} ops acknowledged in {:.2f} s, then SIGKILL; log on disk {:.1f} MiB\n",
             j["writer"]["acked_ops"].get<uint64_t>(), j["writer"]["seconds"].get<double>(),
             j["store"]["wal_bytes"].get<double>() / (1 << 20));
  if (j.contains("planted_damage"))
    fmt::print(o, "planted damage: {} offset {} (LSN {})\n", j["planted_damage"]["file"].get<std::string>(),
               j["planted_damage"]["offset"].get<uint64_t>(), j["planted_damage"]["lsn"].get<uint64_t>());
  if (j.contains("recovery")) {
    const auto& r = j["recovery"];
    fmt::print(o, "\n{:<28} {:>10}\n", "recovery phase", "seconds");
    fmt::print(o, "{}\n", std::string(39, '-'));
    for (auto [k, name] : {std::pair{"checkpoint_load_s", "checkpoint load"}, {"log_read_s", "log read + verify"},
                           {"decode_s", "decode"}, {"apply_s", "apply"}, {"open_s", "open (all of the above)"},
                           {"first_search_s", "first search served"}})
      fmt::print(o, "{:<28} {:>10.3f}\n", name, r[k].get<double>());
    fmt::print(o, "\ncheckpoint LSN {}, {} records ({:.1f} MiB) replayed, {} vectors, peak RSS {:.0f} MiB\n",
               r["checkpoint_lsn"].get<uint64_t>(), r["records_replayed"].get<uint64_t>(),
               r["log_bytes_replayed"].get<double>() / (1 << 20), r["vectors"].get<uint64_t>(),
               r["peak_rss_bytes"].get<double>() / (1 << 20));
    if (!r["tail_note"].get<std::string>().empty()) fmt::print(o, "tail: {}\n", r["tail_note"].get<std::string>());
    if (!r["checkpoint_note"].get<std::string>().empty())
      fmt::print(o, "checkpoint: {}\n", r["checkpoint_note"].get<std::string>());
  }
  if (res.ok)
    fmt::print(o, "verify: OK, all {} acknowledged ops present (the store holds the first {} ops)\n",
               j["verify"]["acked_ops"].get<uint64_t>(), j["verify"]["recovered_ops"].get<uint64_t>());
  else
    fmt::print(o, "verify: FAILED: {}\n", res.problem);
}

std::string DefaultDir() {
  const char* t = std::getenv("TMPDIR");
  return std::string(t && *t ? t : "/var/tmp") + "/vecwal-recovery-" + std::to_string(::getpid());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vecwal-recovery: restart time after a real crash (SIGKILL), phase by phase"};
  app.require_subcommand(1);
  app.fallthrough();  // --json may also follow the subcommand
  std::string json_path;
  app.add_option("--json", json_path, "also write the results as JSON to this file ('-': to stdout, instead of the tables)");

  MeasureConfig mc;
  bool keep = false;
  auto add_common = [&](CLI::App* s) {
    s->add_option("--dir", mc.dir, "work directory on the disk to measure (default: a new one under $TMPDIR)");
    s->add_option("--vectors", mc.vectors, "vectors in the store")->capture_default_str();
    s->add_option("--dim", mc.dim, "float32 components per vector")->capture_default_str();
    s->add_option("--metric", mc.metric, "l2 or ip")->capture_default_str();
    s->add_option("--batch", mc.batch, "ops per atomic write batch")->capture_default_str();
    s->add_option("--mode", mc.mode, "recovery mode: strict, tolerate_tail, salvage")->capture_default_str();
    s->add_option("--seed", mc.seed, "seed of the random kill point")->capture_default_str();
    s->add_flag("--keep", keep, "keep the store afterwards");
  };
  auto* measure = app.add_subcommand("measure", "build a store, SIGKILL its writer, time the restart, verify");
  add_common(measure);
  measure->add_option("--index", mc.index, "FAISS index_factory description")->capture_default_str();
  measure->add_option("--wal-mib", mc.wal_mib, "log written after the base checkpoint before the kill")
      ->capture_default_str();
  measure->add_option("--checkpoint-mib", mc.checkpoint_mib, "automatic checkpoint interval (0: none)")
      ->capture_default_str();
  measure->add_option("--kill-at", mc.kill_at, "kill once this many ops are acknowledged");
  measure->add_flag("--random-kill", mc.random_kill, "kill at a random op after the base checkpoint");
  measure->add_option("--device", mc.device, "cpu, gpu or auto")->capture_default_str();
  measure->add_flag("--plant-lost-record", mc.plant_lost_record,
                    "after the kill, damage the record of the last acknowledged batch: the check must fail");

  SweepConfig sc;
  sc.base.vectors = 20000;
  sc.base.dim = 256;
  auto* sweep = app.add_subcommand("sweep", "measure over log sizes, checkpoint intervals, indices, devices");
  sweep->add_option("--wal-mib", sc.wal_mib, "log sizes after the base checkpoint")->capture_default_str();
  sweep->add_option("--index", sc.indices, "index descriptions")->capture_default_str();
  sweep->add_option("--checkpoint-mib", sc.checkpoint_mib, "checkpoint intervals")->capture_default_str();
  sweep->add_option("--device", sc.devices, "devices (cpu, gpu, auto)")->capture_default_str();
  sweep->add_option("--repeat", sc.repeat, "runs per point; the plot shows medians")->capture_default_str();
  sweep->add_option("--out", sc.out_dir, "where sweep.csv, sweep.svg and sweep.png go")->capture_default_str();
  sweep->add_option("--vectors", sc.base.vectors, "vectors in each store")->capture_default_str();
  sweep->add_option("--dim", sc.base.dim, "float32 components per vector")->capture_default_str();
  sweep->add_option("--batch", sc.base.batch, "ops per atomic write batch")->capture_default_str();
  sweep->add_option("--dir", sc.base.dir, "work directory (default: a new one under $TMPDIR)");

  SoakConfig soak_c;
  soak_c.base.vectors = 20000;
  soak_c.base.dim = 128;
  soak_c.base.batch = 64;
  soak_c.base.checkpoint_mib = 8;
  auto* soak = app.add_subcommand("soak", "kill one store's writer again and again; check every acknowledged op");
  soak->add_option("--seconds", soak_c.seconds, "how long to go on")->capture_default_str();
  soak->add_option("--max-delay-ms", soak_c.max_delay_ms, "a kill lands at most this long after a writer starts")
      ->capture_default_str();
  soak->add_option("--vectors", soak_c.base.vectors, "ids the workload writes")->capture_default_str();
  soak->add_option("--dim", soak_c.base.dim, "float32 components per vector")->capture_default_str();
  soak->add_option("--index", soak_c.base.index, "FAISS index_factory description")->capture_default_str();
  soak->add_option("--batch", soak_c.base.batch, "ops per atomic write batch")->capture_default_str();
  soak->add_option("--checkpoint-mib", soak_c.base.checkpoint_mib, "automatic checkpoint interval")
      ->capture_default_str();
  soak->add_option("--seed", soak_c.base.seed, "seed of the kill delays")->capture_default_str();
  soak->add_option("--dir", soak_c.base.dir, "work directory (default: a new one under $TMPDIR)");
  soak->add_flag("--keep", keep, "keep the store afterwards (it is always kept after a loss)");

  EstimateConfig ec;
  auto* estimate = app.add_subcommand("estimate", "predict the restart time of an existing store");
  estimate->add_option("dir", ec.dir, "the store directory")->required()->check(CLI::ExistingDirectory);
  estimate->add_option("--scratch", ec.scratch, "where the calibration store goes (default: $TMPDIR)");
  estimate->add_option("--calibration-vectors", ec.calibration_vectors, "vectors in the calibration store")
      ->capture_default_str();
  estimate->add_option("--checkpoint-mib", ec.checkpoint_every_mib,
                       "the store's checkpoint_every_log_bytes, in MiB, for the worst case (0: none)")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{0}, uint64_t{1} << 24));
  estimate->add_option("--stall-intervals", ec.stall_intervals,
                       "the store's stall_writes_at_intervals, for the worst case (0: no log limit)")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{0}, uint64_t{1} << 16));
  CLI11_PARSE(app, argc, argv);

  // With --json - the tables go to stderr, so stdout is JSON alone.
  std::FILE* human = json_path == "-" ? stderr : stdout;
  json out;
  int rc = 0;
  try {
    if (measure->parsed()) {
      if (mc.dir.empty()) mc.dir = DefaultDir();
      MeasureResult res = MeasureOnce(mc);
      if (!keep) std::filesystem::remove_all(mc.dir);
      PrintMeasure(human, res);
      out = res.report;
      rc = res.ok ? 0 : 1;
    } else if (sweep->parsed()) {
      if (sc.base.dir.empty()) sc.base.dir = DefaultDir();
      std::filesystem::create_directories(sc.out_dir);
      int failures = 0;
      out = RunSweep(sc, &failures);
      if (!keep) std::filesystem::remove_all(sc.base.dir);
      fmt::print(human, "\n{:<40} {:>10} {:>14} {:>18}\n", "configuration", "wal MiB", "replayed MiB", "first search s");
      for (const auto& p : out["points"])
        fmt::print(human, "{:<40} {:>10} {:>14.1f} {:>18.3f}\n", p["config"].get<std::string>(), p["wal_mib"].get<double>(),
                   p["log_mib_replayed"].get<double>(), p["first_search_s"].get<double>());
      fmt::print(human, "\nwrote {}, {}{}\n", out["csv"].get<std::string>(), out["svg"].get<std::string>(),
                 out["png"].is_null() ? "" : ", " + out["png"].get<std::string>());
      if (failures > 0) fmt::print(human, "FAILED: {} run(s) lost acknowledged ops\n", failures);
      rc = failures > 0 || out["png"].is_null() ? 1 : 0;
    } else if (soak->parsed()) {
      if (soak_c.base.dir.empty()) soak_c.base.dir = DefaultDir();
      int failures = 0;
      out = RunSoak(soak_c, &failures);
      fmt::print(human, "soak: {} kills survived, {} acknowledged ops all present after each, restart median {:.3f} s (max {:.3f} s)\n",
                 out["kills"].get<uint64_t>(), out["ops_acknowledged"].get<uint64_t>(),
                 out["restart_s_median"].get<double>(), out["restart_s_max"].get<double>());
      if (failures > 0) fmt::print(human, "FAILED: {} (store kept in {})\n", out["problem"].get<std::string>(),
                                   out["store"].get<std::string>());
      else if (!keep) std::filesystem::remove_all(soak_c.base.dir);
      rc = failures > 0 ? 1 : 0;
    } else {
      if (ec.scratch.empty()) {
        const char* t = std::getenv("TMPDIR");
        ec.scratch = t && *t ? t : "/var/tmp";
      }
      out = RunEstimate(ec);
      const auto& p = out["predicted"];
      fmt::print(human, "store {}: checkpoint at LSN {} ({:.1f} MiB, {} vectors), log tail {} records ({:.1f} MiB)\n",
                 ec.dir, out["checkpoint"]["lsn"].get<uint64_t>(), out["checkpoint"]["bytes"].get<double>() / (1 << 20),
                 out["checkpoint"]["vectors"].get<uint64_t>(), out["log_tail"]["records"].get<uint64_t>(),
                 out["log_tail"]["bytes"].get<double>() / (1 << 20));
      fmt::print(human, "rates here: checkpoint load {:.0f} MiB/s, log read {:.0f} MiB/s, decode+apply {:.0f} MiB/s\n",
                 out["rates"]["checkpoint_load_bytes_per_s"].get<double>() / (1 << 20),
                 out["rates"]["log_read_bytes_per_s"].get<double>() / (1 << 20),
                 out["rates"]["replay_bytes_per_s"].get<double>() / (1 << 20));
      fmt::print(human, "predicted restart to first search: {:.2f} s (checkpoint load {:.2f} s, log read {:.2f} s, "
                 "decode+apply {:.2f} s)\n",
                 p["total_s"].get<double>(), p["checkpoint_load_s"].get<double>(), p["log_read_s"].get<double>(),
                 p["replay_s"].get<double>());
      if (const auto& w = out["worst_case"]; w.is_null())
        fmt::print(human, "worst case: no bound (no log limit: --checkpoint-mib or --stall-intervals is 0)\n");
      else
        fmt::print(human, "worst case, the log at its limit of {:.0f} MiB: {:.2f} s (log read {:.2f} s, decode+apply {:.2f} s)\n",
                   w["log_limit_bytes"].get<double>() / (1 << 20), w["total_s"].get<double>(),
                   w["log_read_s"].get<double>(), w["replay_s"].get<double>());
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "vecwal-recovery: {}\n", e.what());
    return 2;
  }
  if (!json_path.empty()) {
    if (json_path == "-") std::cout << out.dump(2) << "\n";
    else if (!(std::ofstream(json_path) << out.dump(2) << "\n")) {
      fmt::print(stderr, "vecwal-recovery: cannot write {}\n", json_path);
      return 2;
    }
  }
  return rc;
}
