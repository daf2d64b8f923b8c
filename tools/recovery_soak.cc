// `vecwal-recovery soak`: one store, killed again and again for as long as
// asked. Each round a writer process goes on from where the last restart
// left the store (writing batches, searching, checkpointing automatically)
// and is SIGKILLed after a random delay; a restart then checks every op it
// saw acknowledged. The first loss stops the soak and keeps the store.
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <random>
#include <stdexcept>

#include <fmt/core.h>

#include "tools/crash_process.h"
#include "tools/recovery_measure.h"

namespace vecwal::tools {

nlohmann::json RunSoak(const SoakConfig& c, int* failures) {
  using Clock = std::chrono::steady_clock;
  *failures = 0;
  const std::string store = c.base.dir + "/store";
  std::filesystem::remove_all(store);
  std::filesystem::create_directories(c.base.dir);
  std::mt19937_64 rng(c.base.seed);
  const auto deadline = Clock::now() + std::chrono::duration<double>(c.seconds);
  uint64_t recovered = 0, kills = 0, verified = 0;
  std::vector<double> restart_s;
  std::string problem;
  while (Clock::now() < deadline) {
    auto w = StartWriter(c.base, store, recovered, true);
    const auto kill_at = Clock::now() + std::chrono::milliseconds(rng() % (c.max_delay_ms + 1));
    uint64_t acked = recovered, v = 0;
    bool ended = false;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(kill_at - Clock::now()).count();
      if (left <= 0) break;
      pollfd p{w.reports, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
      if (::read(w.reports, &v, sizeof v) != sizeof v) {
        ended = true;
        break;
      }
      acked = std::max(acked, v & ~kBaseDone);
    }
    ::kill(w.pid, SIGKILL);
    while (::read(w.reports, &v, sizeof v) == sizeof v) acked = std::max(acked, v & ~kBaseDone);
    ::close(w.reports);
    int st = 0;
    ::waitpid(w.pid, &st, 0);
    if (ended && !(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL))
      throw std::runtime_error("the writer process ended before the kill: " + ExitDescription(st));
    ++kills;
    auto r = TimedRestart(c.base, store, acked);
    if (r.contains("open_error")) {
      problem = "restart " + std::to_string(kills) + " refused to open: " + r["open_error"].get<std::string>();
    } else if (!r["verify"]["ok"].get<bool>()) {
      problem = "restart " + std::to_string(kills) + ": " + r["verify"]["problem"].get<std::string>();
    }
    if (!problem.empty()) {
      ++*failures;
      fmt::print(stderr, "  LOST: {}\n", problem);
      break;
    }
    verified += acked - recovered;  // each restart checks the whole store: these are the new ones
    recovered = r["verify"]["recovered_ops"].get<uint64_t>();
    restart_s.push_back(r["recovery"]["first_search_s"].get<double>());
    fmt::print(stderr, "  kill {}: {} ops acknowledged, the store holds the first {}; restart {:.3f} s\n", kills,
               acked, recovered, restart_s.back());
  }
  std::sort(restart_s.begin(), restart_s.end());
  return {{"kills", kills},
          {"ops_acknowledged", verified},
          {"ops_in_store", recovered},
          {"restart_s_median", restart_s.empty() ? 0.0 : restart_s[restart_s.size() / 2]},
          {"restart_s_max", restart_s.empty() ? 0.0 : restart_s.back()},
          {"failures", *failures},
          {"problem", problem},
          {"store", store}};
}

}  // namespace vecwal::tools
