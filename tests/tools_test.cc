// The tools end to end on small stores: vecwal-inspect, vecwal-recovery and
// vecwal-bench run as a user runs them, and their output is checked (JSON
// parsed, CSV rows counted, plots opened, planted damage found where it was
// planted, a planted lost record failing the crash check).
#define BOOST_TEST_MODULE tools
#include <boost/test/unit_test.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#ifdef VECWAL_HAVE_CUDA
#include "gpu/device.h"
#endif
#include "recovery/durable_index.h"
#include "tests/test_util.h"

using nlohmann::json;
using namespace vecwal;

namespace {

struct Ran {
  int status = -1;
  std::string out;
};

// Runs a shell command; stdout is captured, stderr goes to the test log.
Ran Run(const std::string& cmd) {
  BOOST_TEST_MESSAGE("$ " << cmd);
  Ran r;
  std::FILE* p = ::popen(cmd.c_str(), "r");
  BOOST_REQUIRE(p != nullptr);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

json RunJson(const std::string& cmd, int want_status = 0) {
  Ran r = Run(cmd);
  BOOST_REQUIRE_MESSAGE(r.status == want_status, cmd << " exited " << r.status << ", wanted " << want_status
                                                     << "; stdout:\n" << r.out);
  return json::parse(r.out);
}

const std::string kInspect = VECWAL_INSPECT_BIN;
const std::string kRecovery = VECWAL_RECOVERY_BIN;
const std::string kBench = VECWAL_BENCH_BIN;
const std::string kReindex = VECWAL_REINDEX_BIN;

// A small store left behind by a real crash: 2000 x 16-d vectors, a base
// checkpoint, then about 1 MiB of log.
std::string CrashedStore(const test::TempDir& t) {
  json j = RunJson(kRecovery + " --json - measure --keep --dir " + t.path() +
                   " --vectors 2000 --dim 16 --batch 64 --wal-mib 1");
  BOOST_REQUIRE(j["verify"]["ok"].get<bool>());
  return t.path() + "/store";
}

void FlipByte(const std::string& path, uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  BOOST_REQUIRE(f.good());
  f.seekg(static_cast<std::streamoff>(offset));
  char c;
  f.get(c);
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(static_cast<char>(c ^ 0x10));
  BOOST_REQUIRE(f.good());
}

std::string Slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

BOOST_AUTO_TEST_CASE(inspect_lists_dumps_and_verifies_a_clean_store) {
  test::TempDir t;
  std::string store = CrashedStore(t);
  json segs = RunJson(kInspect + " --json segments " + store);
  BOOST_REQUIRE(!segs["segments"].empty());
  BOOST_TEST(segs["segments"][0]["state"] == "live");
  BOOST_TEST(segs["segments"][0]["first_lsn"] == 1);
  const uint64_t last = segs["last_lsn"].get<uint64_t>();
  BOOST_TEST(last > 10);
  BOOST_TEST(segs["sealed_lsn"] == last);  // closed cleanly after the crash's recovery

  json all = RunJson(kInspect + " --json dump " + store);
  BOOST_TEST(all["records"].size() == last);
  json some = RunJson(kInspect + " --json dump --from 5 --to 7 " + store);
  BOOST_REQUIRE(some["records"].size() == 3);
  BOOST_TEST(some["records"][0]["lsn"] == 5);
  BOOST_TEST(some["records"][0]["type"] == "batch");
  json one = RunJson(kInspect + " --json dump --id 1999 " + store);
  BOOST_REQUIRE(!one["records"].empty());  // the batch that inserted it, at least
  bool named = false;
  for (const auto& op : one["records"][0]["ops"]) named |= op["id"] == 1999;
  BOOST_TEST(named);

  json ck = RunJson(kInspect + " --json checkpoints " + store);
  BOOST_REQUIRE(ck["checkpoints"].size() >= 2);  // the empty one at creation and the base one
  BOOST_TEST(ck["checkpoints"].back()["vectors"] == 2000);
  BOOST_TEST(ck["checkpoints"].back()["dim"] == 16);

  json v = RunJson(kInspect + " --json verify " + store);
  BOOST_TEST(v["ok"].get<bool>());
  BOOST_TEST(v["problems"].empty());
  BOOST_TEST(Run(kInspect + " segments " + store).out.find("live") != std::string::npos);  // the table form
}

BOOST_AUTO_TEST_CASE(inspect_reports_planted_corruption_at_its_offset) {
  test::TempDir t;
  std::string store = CrashedStore(t);
  json segs = RunJson(kInspect + " --json segments " + store);
  const uint64_t last = segs["last_lsn"].get<uint64_t>();
  // A record in the middle of the log, not its tail.
  const uint64_t lsn = last - 5;
  json rec = RunJson(kInspect + " --json dump --from " + std::to_string(lsn) + " --to " + std::to_string(lsn) + " " +
                     store)["records"][0];
  const std::string seg = store + "/wal/" + wal::SegmentFileName(rec["segment"].get<uint64_t>());
  FlipByte(seg, rec["offset"].get<uint64_t>() + wal::kRecordHeaderSize + 20);

  json v = RunJson(kInspect + " --json verify " + store, 1);
  BOOST_TEST(!v["ok"].get<bool>());
  BOOST_REQUIRE(v["problems"].size() == 1);
  const auto& p = v["problems"][0];
  BOOST_TEST(p["file"] == seg);
  BOOST_TEST(p["offset"] == rec["offset"]);
  BOOST_TEST(p["first_lsn"] == lsn);
  BOOST_TEST(v["recovery"].get<std::string>().find("refuses") != std::string::npos);

  // A flipped byte in the newest checkpoint's index section.
  json ck = RunJson(kInspect + " --json checkpoints " + store)["checkpoints"].back();
  const uint64_t section = ck["sections"][0]["offset"].get<uint64_t>();
  FlipByte(ck["file"].get<std::string>(), section + 100);
  v = RunJson(kInspect + " --json verify " + store, 1);
  BOOST_REQUIRE(v["problems"].size() == 2);
  BOOST_TEST(v["problems"][1]["file"] == ck["file"]);
  BOOST_TEST(v["problems"][1]["offset"] == section);
  BOOST_TEST(v["problems"][1]["lsn"] == ck["lsn"]);
  // The table names the same.
  Ran table = Run(kInspect + " verify " + store);
  BOOST_TEST(table.status == 1);
  BOOST_TEST(table.out.find(seg + " offset " + std::to_string(rec["offset"].get<uint64_t>())) != std::string::npos);
}

// Recovery loads the newest checkpoint that verifies; with the newest one
// damaged, damage in the log below it is no longer "held by the checkpoint":
// recovery reads it after the older one, and refuses to open.
BOOST_AUTO_TEST_CASE(inspect_judges_recovery_from_the_newest_checkpoint_that_verifies) {
  test::TempDir t;
  std::string store = CrashedStore(t);
  json cks = RunJson(kInspect + " --json checkpoints " + store)["checkpoints"];
  BOOST_REQUIRE(cks.size() == 2u);  // the empty one at creation and the base one
  const json& newest = cks.back();
  BOOST_REQUIRE(newest["lsn"].get<uint64_t>() > 5);
  json rec = RunJson(kInspect + " --json dump --from 5 --to 5 " + store)["records"][0];
  FlipByte(store + "/wal/" + wal::SegmentFileName(rec["segment"].get<uint64_t>()),
           rec["offset"].get<uint64_t>() + wal::kRecordHeaderSize + 20);
  json v = RunJson(kInspect + " --json verify " + store, 1);
  BOOST_REQUIRE(v["problems"].size() == 1u);
  BOOST_TEST(v["problems"][0]["note"].get<std::string>().find("LSN " + std::to_string(newest["lsn"].get<uint64_t>())) !=
             std::string::npos, v.dump());
  BOOST_TEST(v["recovery"].get<std::string>().find("reads every record") != std::string::npos, v.dump());

  FlipByte(newest["file"].get<std::string>(), newest["sections"][0]["offset"].get<uint64_t>() + 100);
  v = RunJson(kInspect + " --json verify " + store, 1);
  BOOST_REQUIRE(v["problems"].size() == 2u);
  BOOST_TEST(!v["problems"][0].contains("note"), v.dump());
  BOOST_TEST(v["recovery"].get<std::string>().find("refuses to open") != std::string::npos, v.dump());

  FlipByte(cks[0]["file"].get<std::string>(), 100);  // the header: no checkpoint verifies now
  v = RunJson(kInspect + " --json verify " + store, 1);
  BOOST_TEST(v["recovery"] == "recovery refuses to open: no checkpoint verifies", v.dump());
}

// The store was closed (sealed) after the crash's recovery: a last record that
// now reads as torn was acknowledged, and verify says recovery will refuse.
BOOST_AUTO_TEST_CASE(inspect_reports_sealed_records_the_log_no_longer_holds) {
  test::TempDir t;
  std::string store = CrashedStore(t);
  json segs = RunJson(kInspect + " --json segments " + store);
  const uint64_t last = segs["last_lsn"].get<uint64_t>();
  json rec = RunJson(kInspect + " --json dump --from " + std::to_string(last) + " " + store)["records"][0];
  test::Fill(store + "/wal/" + wal::SegmentFileName(rec["segment"].get<uint64_t>()), rec["offset"].get<uint64_t>() + 512,
             4096 - 512, 0);
  json v = RunJson(kInspect + " --json verify " + store, 1);
  bool named = false;
  for (const auto& p : v["problems"])
    named |= p["file"] == store + "/wal/SEAL" && p["first_lsn"] == last && p["last_lsn"] == last;
  BOOST_TEST(named, v.dump());
  BOOST_TEST(v["recovery"].get<std::string>().find("refuses to open") != std::string::npos, v.dump());
}

// A mistyped path is an error, not an empty log that verifies.
BOOST_AUTO_TEST_CASE(inspect_refuses_a_directory_that_holds_no_vecwal_files) {
  test::TempDir t;
  for (const char* cmd : {" verify ", " dump ", " segments "}) {
    Ran r = Run(kInspect + cmd + t.path() + " 2>&1");
    BOOST_TEST(r.status == 2);
    BOOST_TEST(r.out.find("is no vecwal store") != std::string::npos, r.out);
  }
}

BOOST_AUTO_TEST_CASE(inspect_is_read_only_and_lock_free_on_a_live_store) {
  test::TempDir t;
  recovery::DurableIndexOptions o;
  o.dir = t / "live";
  o.spec = {8, index::Metric::kL2, "Flat"};
  auto d = recovery::DurableIndex::Open(o);
  BOOST_REQUIRE(d.ok());
  std::vector<float> v(8, 1.f);
  for (uint64_t i = 0; i < 50; ++i) BOOST_REQUIRE((*d)->Upsert(i, v).ok());
  // The store's process holds the log's lock the whole time.
  json all = RunJson(kInspect + " --json dump " + o.dir);
  BOOST_TEST(all["records"].size() == 50);
  BOOST_TEST(RunJson(kInspect + " --json verify " + o.dir)["ok"].get<bool>());
  for (uint64_t i = 50; i < 60; ++i) BOOST_REQUIRE((*d)->Upsert(i, v).ok());
  BOOST_REQUIRE((*d)->Close().ok());
  d->reset();
  auto again = recovery::DurableIndex::Open(o);
  BOOST_REQUIRE(again.ok());
  BOOST_TEST((*again)->Size() == 60u);
}

// A Scrub's repair keeps a second copy of its checkpoint (DIR/copy) while the
// store holds one generation: the inspector lists it, and judges recovery
// from it where the store's own file no longer verifies, as Open does.
BOOST_AUTO_TEST_CASE(inspect_lists_a_repairs_second_copy_and_judges_recovery_from_it) {
  test::TempDir t;
  recovery::DurableIndexOptions o;
  o.dir = t / "store";
  o.spec = {8, index::Metric::kL2, "Flat"};
  {
    auto d = recovery::DurableIndex::Open(o);
    BOOST_REQUIRE(d.ok());
    std::vector<float> v(8, 1.f);
    for (uint64_t i = 0; i < 40; ++i) BOOST_REQUIRE((*d)->Upsert(i, v).ok());
    BOOST_REQUIRE((*d)->Checkpoint().ok());
    for (uint64_t i = 40; i < 60; ++i) BOOST_REQUIRE((*d)->Upsert(i, v).ok());
    json rec = RunJson(kInspect + " --json dump --from 50 --to 50 " + o.dir)["records"][0];
    FlipByte(o.dir + "/wal/" + wal::SegmentFileName(rec["segment"].get<uint64_t>()),
             rec["offset"].get<uint64_t>() + wal::kRecordHeaderSize + 20);
    auto scrub = (*d)->Scrub();
    BOOST_REQUIRE(scrub.ok());
    BOOST_REQUIRE(!scrub->problems.empty());
    BOOST_REQUIRE((*d)->Close().ok());
  }
  const json listed = RunJson(kInspect + " --json checkpoints " + o.dir);
  json cks = json::array();  // less the retired file the next checkpoint reuses (a note)
  for (const auto& c : listed["checkpoints"])
    if (!c.contains("note")) cks.push_back(c);
  BOOST_REQUIRE(cks.size() == 2u);  // the repair's, and its copy
  BOOST_TEST(cks[1]["file"].get<std::string>().find("/copy/ckpt-") != std::string::npos, cks.dump());
  BOOST_TEST(cks[0]["lsn"] == cks[1]["lsn"]);
  BOOST_TEST(Run(kInspect + " checkpoints " + o.dir).out.find("copy/ckpt-") != std::string::npos);
  FlipByte(cks[0]["file"].get<std::string>(), cks[0]["sections"][0]["offset"].get<uint64_t>() + 100);
  json v = RunJson(kInspect + " --json verify " + o.dir, 1);
  // The damaged record (below the checkpoint, which holds its op) and the store's own file.
  BOOST_REQUIRE_MESSAGE(v["problems"].size() == 2u, v.dump());
  BOOST_TEST(v["problems"][0]["note"].get<std::string>().find("below checkpoint LSN") != std::string::npos, v.dump());
  BOOST_TEST(v["problems"][1]["file"] == cks[0]["file"], v.dump());
  BOOST_TEST(v["recovery"].get<std::string>().find("reads every record") != std::string::npos, v.dump());
  auto d = recovery::DurableIndex::Open(o);
  BOOST_REQUIRE_MESSAGE(d.ok(), d.status().ToString());
  BOOST_TEST((*d)->Size() == 60u);
}

BOOST_AUTO_TEST_CASE(reindex_copies_a_crashed_store_into_another_index_and_refuses_what_it_cannot) {
  test::TempDir t;
  const std::string store = CrashedStore(t), ivf = t / "ivf";
  json j = RunJson(kReindex + " --json " + store + " " + ivf + " --index IVF16,Flat --train-sample 500");
  BOOST_TEST(j["to_index"] == "IVF16,Flat");
  BOOST_TEST(j["trained_on"] == 500);
  BOOST_TEST(j["dim"] == 16);
  // Not yet opened, the new store is one checkpoint and no wal/: inspect
  // reads it as a store and checks that checkpoint (a copy of it, damaged,
  // fails the check).
  json v = RunJson(kInspect + " --json verify " + ivf);
  BOOST_TEST(v["ok"].get<bool>(), v.dump());
  BOOST_REQUIRE_EQUAL(v["checkpoints"].size(), 1u);
  BOOST_TEST(v["checkpoints"][0]["lsn"] == 1);
  BOOST_TEST(v["checkpoints"][0]["index"] == "IVF16,Flat");
  BOOST_TEST(v["records"] == 0);
  BOOST_TEST(RunJson(kInspect + " --json checkpoints " + ivf)["checkpoints"].size() == 1u);
  json est = RunJson(kRecovery + " --json - estimate " + ivf + " --scratch " + t.path() + " --calibration-vectors 1000");
  BOOST_TEST(est["checkpoint"]["lsn"] == 1);
  BOOST_TEST(est["log_tail"]["records"] == 0);
  const std::string damaged = t / "damaged";
  std::filesystem::create_directories(damaged);
  const std::string ck = v["checkpoints"][0]["file"].get<std::string>();
  std::filesystem::copy_file(ck, damaged + "/" + std::filesystem::path(ck).filename().string());
  FlipByte(damaged + "/" + std::filesystem::path(ck).filename().string(),
           v["checkpoints"][0]["sections"][0]["offset"].get<uint64_t>() + 10);
  json bad = RunJson(kInspect + " --json verify " + damaged, 1);
  BOOST_TEST(!bad["ok"].get<bool>(), bad.dump());
  BOOST_TEST(bad["recovery"].get<std::string>().find("no checkpoint verifies") != std::string::npos, bad.dump());
  recovery::DurableIndexOptions from, to;
  from.dir = store;
  from.spec = {16, index::Metric::kL2, j["from_index"].get<std::string>()};
  to.dir = ivf;
  to.spec = {16, index::Metric::kL2, "IVF16,Flat"};
  {
    auto a = recovery::DurableIndex::Open(from);
    auto b = recovery::DurableIndex::Open(to);
    BOOST_REQUIRE_MESSAGE(a.ok(), a.status().ToString());
    BOOST_REQUIRE_MESSAGE(b.ok(), b.status().ToString());
    BOOST_TEST((*a)->Size() == j["entries"].get<size_t>());
    BOOST_TEST((*b)->Size() == (*a)->Size());
    BOOST_TEST((*b)->Stats().recovery.records_replayed == 0u);
    size_t differ = 0;
    BOOST_REQUIRE((*a)->Scan(256, [&](const recovery::ScanPiece& p) {
      for (size_t i = 0; i < p.ids.size(); ++i) {
        auto e = (*b)->Get(p.ids[i]);
        differ += !e.ok() || !std::equal(e->vector.begin(), e->vector.end(), p.vectors.begin() + i * 16) ||
                  !std::equal(e->payload.begin(), e->payload.end(), p.payloads[i].begin(), p.payloads[i].end());
      }
      return Status::OK();
    }).ok());
    BOOST_TEST(differ == 0u);
  }
  Ran again = Run(kReindex + " " + store + " " + ivf + " --index HNSW16 2>&1");
  BOOST_TEST(again.status == 2);
  BOOST_TEST(again.out.find("is not empty") != std::string::npos, again.out);
  Ran none = Run(kReindex + " " + t.path() + " " + (t / "x") + " --index Flat 2>&1");
  BOOST_TEST(none.status == 2);
  BOOST_TEST(none.out.find("no checkpoint names the store's index") != std::string::npos, none.out);
}

BOOST_AUTO_TEST_CASE(recovery_measure_times_each_phase_and_verifies) {
  test::TempDir t;
  json j = RunJson(kRecovery + " --json - measure --dir " + t.path() +
                   " --vectors 1500 --dim 16 --batch 32 --wal-mib 1 --random-kill --seed 7 --index HNSW16");
  BOOST_TEST(j["verify"]["ok"].get<bool>());
  BOOST_TEST(j["verify"]["recovered_ops"].get<uint64_t>() >= j["writer"]["acked_ops"].get<uint64_t>());
  const auto& r = j["recovery"];
  for (const char* k : {"checkpoint_load_s", "log_read_s", "decode_s", "apply_s", "open_s", "first_search_s"})
    BOOST_TEST(r[k].get<double>() >= 0.0, k);
  BOOST_TEST(r["first_search_s"].get<double>() >= r["open_s"].get<double>());
  BOOST_TEST(r["checkpoint_lsn"].get<uint64_t>() > 0);
  BOOST_TEST(r["peak_rss_bytes"].get<uint64_t>() > 0);
  BOOST_TEST(!std::filesystem::exists(t / "store"));  // removed without --keep
}

BOOST_AUTO_TEST_CASE(recovery_measure_fails_loudly_on_a_planted_lost_record) {
  test::TempDir t;
  json j = RunJson(kRecovery + " --json - measure --dir " + t.path() +
                       " --vectors 1000 --dim 16 --batch 32 --wal-mib 1 --plant-lost-record",
                   1);
  BOOST_TEST(!j["verify"]["ok"].get<bool>());
  // Either way is loud: the record reads as a torn tail and the check finds
  // the acknowledged op lost, or a later record (a write in flight at the
  // kill) proves it was acknowledged and recovery refuses the store.
  const auto problem = j["verify"]["problem"].get<std::string>();
  BOOST_TEST((problem.find("lost") != std::string::npos || problem.find("refused to open") != std::string::npos),
             problem);
  BOOST_TEST(j.contains("planted_damage"));
  // The table says so too.
  Ran r = Run(kRecovery + " measure --dir " + t.path() +
              " --vectors 1000 --dim 16 --batch 32 --wal-mib 1 --plant-lost-record");
  BOOST_TEST(r.status == 1);
  BOOST_TEST(r.out.find("verify: FAILED") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(recovery_sweep_writes_csv_svg_and_png) {
  test::TempDir t;
  json j = RunJson(kRecovery + " --json - sweep --dir " + (t / "work") + " --out " + (t / "out") +
                   " --vectors 800 --dim 16 --batch 32 --wal-mib 0.25 1 --index Flat HNSW16 --repeat 2");
  BOOST_TEST(j["failures"] == 0);
  BOOST_TEST(j["points"].size() == 4u);  // 2 indices x 2 log sizes
  std::string csv = Slurp(t / "out/sweep.csv");
  BOOST_TEST(std::count(csv.begin(), csv.end(), '\n') == 1 + 2 * 2 * 2);  // header + points x repeats
  BOOST_TEST(csv.find(",NO\n") == std::string::npos);
  std::string svg = Slurp(t / "out/sweep.svg");
  BOOST_TEST(svg.find("<svg") == 0u);
  BOOST_TEST(svg.find("<polyline") != std::string::npos);
  BOOST_TEST(svg.find("HNSW16") != std::string::npos);
  std::string png = Slurp(t / "out/sweep.png");
  BOOST_TEST(png.size() > 5000u);
  BOOST_TEST(png.substr(1, 3) == "PNG");
}

BOOST_AUTO_TEST_CASE(recovery_estimate_predicts_from_an_existing_store) {
  test::TempDir t;
  std::string store = CrashedStore(t);
  json ck = RunJson(kInspect + " --json checkpoints " + store)["checkpoints"].back();
  json e = RunJson(kRecovery + " --json - estimate " + store + " --scratch " + t.path() +
                   " --calibration-vectors 1000");
  BOOST_TEST(e["checkpoint"]["lsn"] == ck["lsn"]);
  BOOST_TEST(e["checkpoint"]["bytes"] == ck["file_bytes"]);
  BOOST_TEST(e["log_tail"]["records"].get<uint64_t>() > 0);
  BOOST_TEST(e["predicted"]["total_s"].get<double>() > 0.0);
  BOOST_TEST(e["predicted"]["total_s"].get<double>() < 60.0);
  // The worst case replays a whole log limit at the rates measured, beside
  // the same checkpoint load: the library's defaults (256 MiB x 4), or the
  // store's options where they are given.
  auto expect_worst = [&](const json& est, uint64_t limit) {
    const json& w = est["worst_case"];
    BOOST_REQUIRE(w.is_object());
    BOOST_TEST(w["log_limit_bytes"].get<uint64_t>() == limit);
    const double at = static_cast<double>(limit);
    const json& r = est["rates"];
    BOOST_TEST(w["log_read_s"].get<double>() == at / r["log_read_bytes_per_s"].get<double>(),
               boost::test_tools::tolerance(1e-9));
    BOOST_TEST(w["replay_s"].get<double>() == at / r["replay_bytes_per_s"].get<double>(),
               boost::test_tools::tolerance(1e-9));
    BOOST_TEST(w["checkpoint_load_s"].get<double>() == est["predicted"]["checkpoint_load_s"].get<double>());
    BOOST_TEST(w["total_s"].get<double>() > w["log_read_s"].get<double>() + w["replay_s"].get<double>());
  };
  expect_worst(e, uint64_t{1} << 30);
  const std::string again = kRecovery + " --json - estimate " + store + " --scratch " + t.path() +
                            " --calibration-vectors 1000 --checkpoint-mib 2";
  expect_worst(RunJson(again + " --stall-intervals 3"), uint64_t{6} << 20);
  BOOST_TEST(RunJson(again + " --stall-intervals 0")["worst_case"].is_null());
  // Read-only: the store is unchanged and still opens with the same last LSN.
  BOOST_TEST(RunJson(kInspect + " --json verify " + store)["ok"].get<bool>());
}

BOOST_AUTO_TEST_CASE(bench_store_workloads_print_each_figure_beside_its_baseline) {
  test::TempDir t;
  const std::string common = " --dir " + t.path() + " --seconds 0.3 --dim 16 --vectors 600 --writers 2 --batch 64";
  for (const std::string sub : {"ingest", "search", "mixed"}) {
    const std::string json_path = t / (sub + ".json");
    Ran r = Run(kBench + " " + sub + common + " --no-rocksdb --json " + json_path);
    BOOST_REQUIRE_MESSAGE(r.status == 0, sub << " exited " << r.status);
    BOOST_TEST(r.out.find("ratio") != std::string::npos);
    json j = json::parse(Slurp(json_path));
    BOOST_TEST(j["format"] == "vecwal-bench/1");
    BOOST_REQUIRE(!j["rows"].empty());
    for (const auto& row : j["rows"]) {
      BOOST_TEST(row["vecwal"].get<double>() > 0.0, sub << ": " << row.dump());
      if (!row["baseline"].get<std::string>().empty())
        BOOST_TEST(row["ratio"].get<double>() > 0.0, sub << ": " << row.dump());
    }
  }
  // A filtered search, beside FAISS's own search with the same ids selected.
  for (const std::string as : {"", " --filter-as-ids"}) {
    BOOST_REQUIRE(Run(kBench + " search" + common + " --filter-share 0.1" + as + " --json " + (t / "filtered.json"))
                      .status == 0);
    const json filtered = json::parse(Slurp(t / "filtered.json"));
    BOOST_REQUIRE(!filtered["rows"].empty());
    for (const auto& row : filtered["rows"]) {
      BOOST_TEST(row["workload"].get<std::string>().find(as.empty() ? "filter passes 10%" : "filter passes 10% (ids)") !=
                     std::string::npos,
                 row.dump());
      BOOST_TEST(row["vecwal"].get<double>() > 0.0, row.dump());
    }
  }
}

// vecwal-bench gpu runs the store on the card beside FAISS's CPU search where
// there is a card; where there is none it says so and measures nothing on
// the CPU in its place.
BOOST_AUTO_TEST_CASE(bench_gpu_measures_on_a_card_or_names_what_is_missing) {
  test::TempDir t;
#ifdef VECWAL_HAVE_CUDA
  if (gpu::CudaDeviceCount() == 0) {
    Ran r = Run(kBench + " gpu --dir " + t.path() + " 2>&1");
    BOOST_TEST(r.status == 1);
    BOOST_TEST(r.out.find("no CUDA device 0 here") != std::string::npos, r.out);
    Ran d = Run(kBench + " --device gpu search --dir " + t.path() + " 2>&1");
    BOOST_TEST(d.status == 2);
    BOOST_TEST(d.out.find("--device gpu: no CUDA device here") != std::string::npos, d.out);
    return;
  }
  BOOST_REQUIRE(Run(kBench + " gpu --dir " + t.path() +
                    " --vectors 3000 --dim 16 --queries 1 8 --seconds 0.3 --torch-script '' --json " + (t / "g.json"))
                    .status == 0);
  const json rows = json::parse(Slurp(t / "g.json"))["rows"];
  BOOST_REQUIRE(rows.size() == 1u + 2 * 3 + 1);  // recall, 3 rows per batch size, reopen
  BOOST_TEST(rows[0]["vecwal"].get<double>() == 1.0, rows[0].dump());
  for (const auto& row : rows) BOOST_TEST(row["vecwal"].get<double>() > 0.0, row.dump());
#else
  Ran d = Run(kBench + " --device gpu search --dir " + t.path() + " 2>&1");
  BOOST_TEST(d.status == 2);
  BOOST_TEST(d.out.find("this build has no CUDA") != std::string::npos, d.out);
#endif
}

// The checkpoint workload times a backup (copied and read back) beside a raw
// copy of the same file; a count of zero is refused by name.
BOOST_AUTO_TEST_CASE(bench_checkpoint_prints_a_backup_beside_a_raw_copy) {
  test::TempDir t;
  const std::string cmd = kBench + " checkpoint --dir " + t.path() + " --dim 16 --vectors 600";
  Ran zero = Run(cmd + " --repeat 0 2>&1");
  BOOST_TEST(zero.status != 0);
  BOOST_TEST(zero.out.find("--repeat: must be more than 0") != std::string::npos, zero.out);
  BOOST_REQUIRE(Run(cmd + " --json " + (t / "ck.json")).status == 0);
  json j = json::parse(Slurp(t / "ck.json"));
  bool found = false;
  for (const auto& row : j["rows"])
    if (row["metric"] == "backup B/s") {
      found = true;
      BOOST_TEST(row["vecwal"].get<double>() > 0.0, row.dump());
      BOOST_TEST(row["ratio"].get<double>() > 0.0, row.dump());
    }
  BOOST_TEST(found, j.dump());
}

BOOST_AUTO_TEST_CASE(bench_reindex_prints_the_copy_beside_faiss_building_the_index_in_memory) {
  test::TempDir t;
  // --json -: the JSON alone on stdout (the table goes to stderr).
  json j = RunJson(kBench + " --json - reindex --dir " + t.path() +
                   " --dim 16 --vectors 3000 --index IVF8,Flat --train-sample 500 2>/dev/null");
  BOOST_REQUIRE_EQUAL(j["rows"].size(), 2u);
  const auto& row = j["rows"][0];
  BOOST_TEST(j["rows"][1]["metric"] == "source scanned s", j.dump());
  BOOST_TEST(j["rows"][1]["vecwal"].get<double>() > 0.0, j.dump());
  BOOST_TEST(row["workload"].get<std::string>().find("reindex Flat -> IVF8,Flat") != std::string::npos, row.dump());
  BOOST_TEST(row["vecwal"].get<double>() > 0.0, row.dump());
  BOOST_TEST(row["ratio"].get<double>() > 0.0, row.dump());
  // With writers beside it (copy first): their longest wait and their rate.
  json w = RunJson(kBench + " --json - reindex --dir " + t.path() +
                   " --dim 16 --vectors 3000 --index IVF8,Flat --train-sample 500 --copy-first --writers-beside 2 2>/dev/null");
  BOOST_REQUIRE_EQUAL(w["rows"].size(), 4u);
  BOOST_TEST(w["rows"][0]["workload"].get<std::string>().find("copy first") != std::string::npos, w.dump());
  BOOST_TEST(w["rows"][2]["metric"] == "longest upsert ms", w.dump());
  BOOST_TEST(w["rows"][3]["metric"] == "upserts/s", w.dump());
  BOOST_TEST(w["rows"][3]["vecwal"].get<double>() > 0.0, w.dump());
}

BOOST_AUTO_TEST_CASE(bench_baseline_flags_a_regression_against_a_saved_run) {
  test::TempDir t;
  const std::string cmd = kBench + " search --dir " + t.path() + " --seconds 0.3 --dim 16 --vectors 600";
  BOOST_REQUIRE(Run(cmd + " --json " + (t / "before.json")).status == 0);
  // Within a wide tolerance the same workload is no regression.
  Ran same = Run(cmd + " --baseline " + (t / "before.json") + " --regression-pct 1000 --fail-on-regression");
  BOOST_TEST(same.status == 0);
  BOOST_TEST(same.out.find("3 row(s) compared, 0 regression(s)") != std::string::npos);
  // An earlier run whose ratios were a thousand times better: every row
  // regressed. (Ten times flaked once beside other tests: a 0.3 s search of 600
  // vectors can swing its ratio several times over from one run to the next.)
  json before = json::parse(Slurp(t / "before.json"));
  for (auto& row : before["rows"]) {
    double v = row["baseline_value"].get<double>();
    row["baseline_value"] = row["higher_is_better"].get<bool>() ? v / 1000 : v * 1000;
  }
  std::ofstream(t / "better.json") << before.dump();
  Ran worse = Run(cmd + " --baseline " + (t / "better.json") + " --fail-on-regression");
  BOOST_TEST(worse.status == 3);
  BOOST_TEST(worse.out.find("REGRESSION") != std::string::npos);
  BOOST_TEST(worse.out.find("3 regression(s)") != std::string::npos);
  // A file that is not a saved run is refused by name.
  std::ofstream(t / "junk.json") << "{\"x\": 1}";
  BOOST_TEST(Run(cmd + " --baseline " + (t / "junk.json")).status == 2);
}

BOOST_AUTO_TEST_CASE(recovery_soak_survives_kill_after_kill) {
  test::TempDir t;
  // Kills up to 1.2 s after a writer starts: a writer's open alone took up to
  // half a second with the other tests running beside it, and at 600 ms no
  // writer of one run got an op acknowledged before its kill.
  json j = RunJson(kRecovery + " --json - soak --seconds 6 --max-delay-ms 1200 --vectors 800 --dim 16 --batch 32 "
                               "--checkpoint-mib 0.1 --dir " + t.path());
  BOOST_TEST(j["failures"] == 0);
  BOOST_TEST(j["kills"].get<uint64_t>() >= 3u);
  BOOST_TEST(j["ops_acknowledged"].get<uint64_t>() > 0u);
  BOOST_TEST(j["ops_in_store"].get<uint64_t>() >= j["ops_acknowledged"].get<uint64_t>());
}
