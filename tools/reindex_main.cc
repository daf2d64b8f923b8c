// vecwal-reindex FROM TO --index DESC: the store in FROM copied into a new
// store in TO with another index description (recovery::Reindex), trained
// on a sample of the entries where the index needs it. FROM is opened as a
// store (its recovery runs, and its lock is taken: a store a server holds
// open is refused); its index description, dimension and metric come from
// its newest checkpoint whose header reads.
#include <cstdio>
#include <cstdlib>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "recovery/checkpoint_file.h"
#include "recovery/reindex.h"
#include "tools/progress.h"

using namespace vecwal;

namespace {

[[noreturn]] void Fail(const std::string& why) {
  fmt::print(stderr, "vecwal-reindex: {}\n", why);
  std::exit(2);
}

// The spec of the newest checkpoint in `dir` (then in its copy/) whose header reads.
index::IndexSpec SpecOf(FileSystem& fs, const std::string& dir) {
  std::string last_problem = "no checkpoint file";
  for (const std::string& d : {dir, dir + "/" + std::string(recovery::kCheckpointCopyDir)}) {
    auto lsns = recovery::ListCheckpoints(fs, d);
    if (!lsns.ok()) continue;
    for (uint64_t lsn : *lsns) {
      auto info = recovery::ReadCheckpointInfo(fs, d + "/" + recovery::CheckpointFileName(lsn));
      if (info.ok()) return info->spec;
      last_problem = info.status().ToString();
    }
  }
  Fail(dir + ": no checkpoint names the store's index (" + last_problem + "); is it a vecwal store?");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vecwal-reindex: copy a store into a new store of another index description"};
  std::string from, to, description, metric;
  recovery::ReindexOptions how;
  size_t max_payload = recovery::DurableIndexOptions{}.max_payload_bytes;
  bool as_json = false;
  app.add_option("from", from, "the store to copy; not open in another process")->required();
  app.add_option("to", to, "the new store's directory: empty or not there yet")->required();
  app.add_option("--index", description, "the new index: a FAISS index_factory string (IVF1024,Flat, HNSW32, ...)")
      ->required();
  app.add_option("--metric", metric, "l2 or ip; default: the source's")->check(CLI::IsMember({"l2", "ip"}));
  app.add_option("--train-sample", how.train_sample, "entries that train an index that needs it")->capture_default_str();
  app.add_option("--threads", how.threads, "OpenMP threads for the new index's training and adds; 0: every core")
      ->capture_default_str();
  app.add_option("--batch", how.batch, "entries per piece of the scan, and per add to the new index")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--max-payload-bytes", max_payload, "the payload cap of both stores")->capture_default_str();
  app.add_flag("--json", as_json, "print JSON instead of a table");
  CLI11_PARSE(app, argc, argv);

  auto fs = NewPosixFileSystem();
  recovery::DurableIndexOptions src;
  src.dir = from;
  src.spec = SpecOf(*fs, from);
  src.max_payload_bytes = max_payload;
  recovery::DurableIndexOptions dst;
  dst.dir = to;
  dst.spec = {src.spec.dim, src.spec.metric, description};
  if (!metric.empty()) dst.spec.metric = metric == "ip" ? index::Metric::kInnerProduct : index::Metric::kL2;
  dst.max_payload_bytes = max_payload;

  auto opened = recovery::DurableIndex::Open(src);
  if (!opened.ok()) Fail("opening " + from + ": " + opened.status().ToString());
  auto& store = **opened;
  fmt::print(stderr, "  copying {} ({} entries, {}) into {} ({}) ...\n", from, store.Size(), src.spec.description, to,
             description);
  auto rep = [&] {
    tools::Progress shown("copying", store.Size(), "entries");  // on a terminal
    how.progress = [&](uint64_t copied) { shown.Update(copied); };
    return recovery::Reindex(store, dst, how);
  }();
  if (!rep.ok()) Fail(rep.status().ToString());
  if (Status s = store.Close(); !s.ok()) Fail("closing " + from + ": " + s.ToString());
  if (as_json) {
    nlohmann::json j = {{"from", from},
                        {"to", to},
                        {"from_index", src.spec.description},
                        {"to_index", description},
                        {"dim", src.spec.dim},
                        {"metric", dst.spec.metric == index::Metric::kInnerProduct ? "ip" : "l2"},
                        {"from_lsn", rep->from_lsn},
                        {"entries", rep->entries},
                        {"trained_on", rep->trained_on},
                        {"checkpoint_lsn", rep->checkpoint_lsn},
                        {"scan_s", rep->scan_s}};
    fmt::print("{}\n", j.dump(2));
  } else {
    fmt::print("copied {} entries of {} (as at LSN {}) into {} ({}, {}-d{}), checkpointed at LSN {}\n", rep->entries,
               from, rep->from_lsn, to, description, src.spec.dim,
               rep->trained_on > 0 ? ", trained on " + std::to_string(rep->trained_on) : std::string(),
               rep->checkpoint_lsn);
  }
  return 0;
}
