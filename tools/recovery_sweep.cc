// `vecwal-recovery sweep`: restart time against log size, one line per
// configuration (index, checkpoint interval, device).
#include <algorithm>
#include <fstream>
#include <map>
#include <stdexcept>

#include <fmt/core.h>

#include "tools/recovery_measure.h"
#include "tools/svg_plot.h"

namespace vecwal::tools {
namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

nlohmann::json RunSweep(const SweepConfig& c, int* failures) {
  *failures = 0;
  const std::string csv_path = c.out_dir + "/sweep.csv", svg_path = c.out_dir + "/sweep.svg",
                    png_path = c.out_dir + "/sweep.png";
  std::ofstream csv(csv_path);
  if (!csv) throw std::runtime_error("cannot write " + csv_path);
  csv << "index,checkpoint_mib,device,wal_mib,repeat,acked_ops,log_bytes_replayed,checkpoint_load_s,log_read_s,"
         "decode_s,apply_s,open_s,first_search_s,peak_rss_bytes,verified\n";
  Chart chart{fmt::format("vecwal restart time, {} x {}-d vectors", c.base.vectors, c.base.dim),
              "log replayed at restart (MiB)", "time to first search served (s)", {}};
  nlohmann::json points = nlohmann::json::array();
  const size_t total = c.indices.size() * c.checkpoint_mib.size() * c.devices.size() * c.wal_mib.size() *
                       static_cast<size_t>(c.repeat);
  size_t run = 0;
  for (const auto& idx : c.indices)
    for (double ck : c.checkpoint_mib)
      for (const auto& dev : c.devices) {
        Series line{fmt::format("{}, ckpt {} MiB, {}", idx, ck, ResolveDevice(dev)), {}};
        for (double wal : c.wal_mib) {
          std::vector<double> xs, ys;
          for (int r = 0; r < c.repeat; ++r) {
            MeasureConfig m = c.base;
            m.index = idx;
            m.checkpoint_mib = ck;
            m.device = dev;
            m.wal_mib = wal;
            m.seed = c.base.seed + static_cast<uint64_t>(r);
            fmt::print(stderr, "  [{}/{}] {} wal {} MiB, repeat {}\n", ++run, total, line.name, wal, r + 1);
            MeasureResult res = MeasureOnce(m);
            if (!res.ok) {
              ++*failures;
              fmt::print(stderr, "  LOST: {}\n", res.problem);
            }
            const auto& j = res.report;
            const auto rec = j.value("recovery", nlohmann::json::object());
            auto f = [&](const char* k) { return rec.value(k, 0.0); };
            csv << fmt::format("{},{},{},{},{},{},{},{:.6f},{:.6f},{:.6f},{:.6f},{:.6f},{:.6f},{},{}\n", idx, ck,
                               ResolveDevice(dev), wal, r + 1, j["writer"]["acked_ops"].get<uint64_t>(),
                               rec.value("log_bytes_replayed", uint64_t{0}), f("checkpoint_load_s"),
                               f("log_read_s"), f("decode_s"), f("apply_s"), f("open_s"), f("first_search_s"),
                               rec.value("peak_rss_bytes", uint64_t{0}), res.ok ? "yes" : "NO");
            xs.push_back(static_cast<double>(rec.value("log_bytes_replayed", uint64_t{0})) / (1 << 20));
            ys.push_back(f("first_search_s"));
          }
          line.points.emplace_back(Median(xs), Median(ys));
          points.push_back({{"config", line.name}, {"wal_mib", wal}, {"log_mib_replayed", Median(xs)},
                            {"first_search_s", Median(ys)}});
        }
        chart.series.push_back(std::move(line));
      }
  csv.close();
  {
    std::ofstream svg(svg_path);
    svg << LineChartSvg(chart);
    if (!svg) throw std::runtime_error("cannot write " + svg_path);
  }
  nlohmann::json out{{"csv", csv_path}, {"svg", svg_path}, {"points", points}, {"failures", *failures}};
  if (std::string why = RenderPng(svg_path, png_path); why.empty()) out["png"] = png_path;
  else {
    out["png"] = nullptr;
    out["png_problem"] = why;
    fmt::print(stderr, "vecwal-recovery: PNG not written: {}\n", why);
  }
  return out;
}

}  // namespace vecwal::tools
