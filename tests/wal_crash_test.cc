// A crash loop: a child process appends from several threads and is killed
// with SIGKILL at a random moment; the parent reopens the log and checks that
// every acknowledged record is there, intact, and that nothing else is but
// whole records that were in flight. VECWAL_CRASH_POINTS sets the number of
// kills (default 200).
#define BOOST_TEST_MODULE wal_crash
#include <boost/test/unit_test.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "tests/test_util.h"
#include "wal/wal.h"

using namespace vecwal;
using namespace vecwal::wal;

namespace {

// Child -> parent, one per acknowledgement or release, atomic in a pipe.
struct Msg {
  uint64_t kind;  // 1: acked (lsn, key), 2: releasing below lsn
  uint64_t lsn;
  uint64_t key;
};

// A record names its key in its first 8 bytes; the rest derives from it.
std::vector<std::byte> RecordFor(uint64_t key) {
  size_t size = 8 + key % 5000;
  std::vector<std::byte> p = test::Payload(key, size);
  std::memcpy(p.data(), &key, 8);
  return p;
}

bool RecordIsWhole(std::span<const std::byte> payload) {
  if (payload.size() < 8) return false;
  uint64_t key;
  std::memcpy(&key, payload.data(), 8);
  auto expect = RecordFor(key);
  return expect.size() == payload.size() && std::equal(expect.begin(), expect.end(), payload.begin());
}

void Send(int fd, const Msg& m) {
  if (::write(fd, &m, sizeof(m)) != sizeof(m)) ::_exit(3);
}

[[noreturn]] void RunChild(const std::string& dir, int out, uint64_t seed) {
  WalOptions o = test::SmallLogOptions();
  o.lock_wait_ms = 5000;
  o.seal_interval_ms = 2;  // kills land in seals too; a seal past the durable LSN fails the reopen
  auto w = Wal::Open(dir, o);
  if (!w.ok()) {
    std::fprintf(stderr, "child open: %s\n", w.status().ToString().c_str());
    ::_exit(2);
  }
  Wal& wal = **w;
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      std::mt19937_64 rng(seed * 8 + t);
      for (uint64_t i = 0;; ++i) {
        uint64_t key = (seed << 40) | (uint64_t(t) << 32) | i;
        auto p = RecordFor(key);
        if (t == 3 && i % 50 == 49) {
          uint64_t d = wal.durable_lsn();
          if (d > 300) {
            Send(out, {2, d - 300, 0});
            (void)wal.ReleaseBefore(d - 300);
          }
        }
        if (rng() % 4 == 0) {  // a small batch
          std::vector<std::vector<std::byte>> ps{p, RecordFor(key | (1ull << 39))};
          std::vector<RecordView> vs{{RecordType::kOpaque, ps[0]}, {RecordType::kOpaque, ps[1]}};
          std::vector<uint64_t> lsns;
          if (!wal.AppendMany(vs, &lsns).ok()) ::_exit(4);
          Send(out, {1, lsns[0], key});
          Send(out, {1, lsns[1], key | (1ull << 39)});
        } else {
          auto lsn = wal.Append(RecordType::kOpaque, p);
          if (!lsn.ok()) ::_exit(4);
          Send(out, {1, *lsn, key});
        }
      }
    });
  for (auto& t : ts) t.join();
  ::_exit(0);
}

}  // namespace

BOOST_AUTO_TEST_CASE(acknowledged_records_survive_sigkill_at_random_points) {
  const int points = test::CrashPoints();
  test::TempDir dir;
  std::mt19937_64 rng(12345);
  std::map<uint64_t, uint64_t> acked;  // lsn -> key, over all rounds
  uint64_t release_bound = 1;
  uint64_t total_in_flight_kept = 0;
  for (int round = 0; round < points; ++round) {
    int code = 0;
    const int fd = test::ForkAndKill([&](int out) { RunChild(dir.path(), out, round + 1); },
                                     std::chrono::microseconds(rng() % 40000), &code);
    BOOST_REQUIRE_MESSAGE(fd >= 0, "child exited by itself with " << code << " in round " << round);
    Msg m;
    while (::read(fd, &m, sizeof(m)) == sizeof(m)) {
      if (m.kind == 1) {
        auto [it, fresh] = acked.emplace(m.lsn, m.key);
        BOOST_REQUIRE_MESSAGE(fresh && it->second == m.key, "LSN " << m.lsn << " acknowledged twice");
      } else {
        release_bound = std::max(release_bound, m.lsn);
      }
    }
    ::close(fd);

    // Recover and check.
    uint64_t seen = 0, unacked_whole = 0, bad = 0;
    auto w = Wal::Open(dir.path(), test::SmallLogOptions(), [&](const LogRecord& r) {
      ++seen;
      if (!RecordIsWhole(r.payload)) ++bad;
      auto it = acked.find(r.lsn);
      if (it == acked.end()) {
        ++unacked_whole;
      } else {
        uint64_t key;
        std::memcpy(&key, r.payload.data(), 8);
        if (key != it->second) ++bad;
      }
      return Status::OK();
    });
    BOOST_REQUIRE_MESSAGE(w.ok(), "round " << round << ": " << w.status().ToString());
    const auto& rep = (*w)->open_report();
    BOOST_REQUIRE_MESSAGE(bad == 0, "round " << round << ": " << bad << " garbled records");
    BOOST_REQUIRE(rep.first_lsn <= release_bound);
    // Every acknowledged LSN still in the log's range was read back.
    uint64_t expected = 0;
    for (auto it = acked.lower_bound(rep.first_lsn); it != acked.end(); ++it) ++expected;
    if (!acked.empty()) {
      const uint64_t newest = acked.rbegin()->first;
      BOOST_REQUIRE_MESSAGE(rep.last_lsn >= newest, "round " << round << ": log ends at " << rep.last_lsn
                                                             << " but LSN " << newest << " was acknowledged");
    }
    BOOST_REQUIRE_EQUAL(seen, expected + unacked_whole);
    total_in_flight_kept += unacked_whole;
    // Unacknowledged records that survived are now part of the log, as a
    // later read will see them: count them as written.
    BOOST_REQUIRE((*w)->Close().ok());
    auto recs = test::ReadLog(dir.path(), RecoveryMode::kStrict);
    BOOST_REQUIRE_MESSAGE(recs.ok(), "round " << round << " strict read after recovery: " << recs.status().ToString());
    for (const auto& r : *recs)
      if (!acked.count(r.lsn)) {
        uint64_t key;
        std::memcpy(&key, r.payload.data(), 8);
        acked.emplace(r.lsn, key);
      }
  }
  BOOST_TEST_MESSAGE(points << " kill points survived; " << acked.size() << " records verified; "
                            << total_in_flight_kept << " in-flight records kept whole");
}
