// A crash loop over the whole store: a child process runs random writes with
// automatic checkpoints and is killed with SIGKILL at random points
// (checkpoints included); after each reopen the store must equal the model
// of every acknowledged op, plus at most the one op that was in flight.
// VECWAL_CRASH_POINTS sets the number of kills (default 200).
#define BOOST_TEST_MODULE durable_index_crash
#include <boost/test/unit_test.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>
#include <optional>
#include <random>
#include <thread>

#include "recovery/durable_index.h"
#include "tests/test_util.h"

using namespace vecwal;
using namespace vecwal::recovery;

namespace {

constexpr uint32_t kDim = 8;

struct Msg {
  uint32_t kind;  // 1 attempt, 2 acknowledged
  uint32_t op;    // 0 upsert, 1 remove, 2 batch (upsert id, remove id2)
  uint64_t id, id2, seed;
};

std::vector<float> VecFor(uint64_t seed) {
  std::vector<float> v(kDim);
  for (uint32_t i = 0; i < kDim; ++i) v[i] = static_cast<float>((seed * 31 + i * 7) % 1000) / 100.f;
  return v;
}

DurableIndexOptions Options(const std::string& dir, const std::string& desc) {
  DurableIndexOptions o;
  o.dir = dir;
  o.spec = {kDim, index::Metric::kL2, desc};
  o.wal = test::SmallLogOptions();
  o.wal.lock_wait_ms = 5000;
  o.wal.seal_interval_ms = 2;  // kills land in seals too; a seal past the durable LSN fails the reopen
  o.checkpoint_every_log_bytes = 8 << 10;
  // Writers wait at every interval for the checkpoint it calls for, so that
  // kill points fall in writes waiting at the log limit too.
  o.stall_writes_at_intervals = 1;
  if (desc != "Flat") {
    o.compact_tombstone_ratio = 0.5;  // some checkpoints keep tombstones, some rebuild without them
    o.recent_writes_merge_at = 4;     // merges (in steps) between checkpoints too
  }
  return o;
}

using Model = std::map<uint64_t, uint64_t>;  // id -> seed of its vector and payload

void ApplyTo(Model& m, const Msg& x) {
  if (x.op == 0 || x.op == 2) m[x.id] = x.seed;
  if (x.op == 1) m.erase(x.id);
  if (x.op == 2) m.erase(x.id2);  // the batch's remove runs after its upsert, even of the same id
}

[[noreturn]] void RunChild(const std::string& dir, const std::string& desc, int out, uint64_t seed) {
  auto d = DurableIndex::Open(Options(dir, desc));
  if (!d.ok()) {
    std::fprintf(stderr, "child open: %s\n", d.status().ToString().c_str());
    ::_exit(2);
  }
  std::mt19937_64 rng(seed);
  for (uint64_t i = 0;; ++i) {
    Msg m{1, static_cast<uint32_t>(rng() % 3), rng() % 64, rng() % 64, seed << 32 | i};
    if (m.op == 1 && !(*d)->Contains(m.id)) m.op = 0;
    if (::write(out, &m, sizeof(m)) != sizeof(m)) ::_exit(3);
    auto v = VecFor(m.seed);
    auto p = test::Payload(m.seed, m.seed % 20);
    Status s;
    if (m.op == 0) {
      s = (*d)->Upsert(m.id, v, p);
    } else if (m.op == 1) {
      s = (*d)->Remove(m.id);
    } else {
      WriteBatch b;
      b.Upsert(m.id, v, p);
      b.Remove(m.id2);
      s = (*d)->Apply(b);
    }
    if (!s.ok()) ::_exit(4);
    m.kind = 2;
    if (::write(out, &m, sizeof(m)) != sizeof(m)) ::_exit(3);
  }
}

bool Matches(const DurableIndex& d, const Model& m) {
  if (d.Size() != m.size()) return false;
  for (const auto& [id, seed] : m) {
    auto e = d.Get(id);
    if (!e.ok() || e->vector != VecFor(seed) || e->payload != test::Payload(seed, seed % 20)) return false;
  }
  return true;
}

}  // namespace

namespace {

// Kills a child writing to a store of `desc` at `points` random points and
// checks the store after each.
void SurvivesKills(const std::string& desc, int points) {
  test::TempDir dir;
  std::mt19937_64 rng(4242);
  Model model;
  uint64_t acked_total = 0, inflight_applied = 0;
  for (int round = 0; round < points; ++round) {
    int code = 0;
    const int fd = test::ForkAndKill([&](int out) { RunChild(dir.path(), desc, out, round + 1); },
                                     std::chrono::microseconds(rng() % 60000), &code);
    BOOST_REQUIRE_MESSAGE(fd >= 0, "child exited by itself with " << code << " in round " << round);
    std::optional<Msg> in_flight;
    Msg m;
    while (::read(fd, &m, sizeof(m)) == sizeof(m)) {
      if (m.kind == 1) {
        in_flight = m;
      } else {
        ApplyTo(model, m);
        in_flight.reset();
        ++acked_total;
      }
    }
    ::close(fd);
    auto d = DurableIndex::Open(Options(dir.path(), desc));
    BOOST_REQUIRE_MESSAGE(d.ok(), "round " << round << ": " << d.status().ToString());
    if (Matches(**d, model)) continue;
    // The op in flight at the kill may have become durable: then it is part of
    // the store from now on.
    BOOST_REQUIRE_MESSAGE(in_flight.has_value(), "round " << round << ": store differs from the acknowledged ops");
    Model with = model;
    ApplyTo(with, *in_flight);
    BOOST_REQUIRE_MESSAGE(Matches(**d, with), "round " << round << ": store matches neither the acknowledged ops"
                                                       << " nor them plus the op in flight");
    model = with;
    ++inflight_applied;
  }
  BOOST_TEST_MESSAGE(desc << ": " << points << " kill points survived; " << acked_total << " acknowledged ops verified; "
                            << inflight_applied << " in-flight ops found durable");
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_acknowledged_op_survives_sigkill_at_random_points) {
  SurvivesKills("Flat", test::CrashPoints());
}

// HNSW adds take long, so kills fall in merges' steps and in checkpoints that
// copy the index or rebuild it without tombstones: a quarter as many.
BOOST_AUTO_TEST_CASE(a_graph_index_store_survives_sigkill_at_random_points) {
  SurvivesKills("HNSW8", std::max(test::CrashPoints() / 4, 2));
}
