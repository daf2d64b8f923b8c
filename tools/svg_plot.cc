#include "tools/svg_plot.h"

#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>

#include <fmt/core.h>

extern char** environ;

namespace vecwal::tools {
namespace {

constexpr double kW = 900, kH = 560, kLeft = 80, kRight = 230, kTop = 50, kBottom = 70;
constexpr const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

std::string Escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else o += c;
  }
  return o;
}

// A step of 1, 2 or 5 times a power of ten giving about five ticks up to hi.
double NiceStep(double hi) {
  if (hi <= 0) return 1;
  double raw = hi / 5, p = std::pow(10, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * p >= raw) return m * p;
  return 10 * p;
}

std::string Tick(double v) {
  std::string s = fmt::format("{:.3g}", v);
  return s;
}

}  // namespace

std::string LineChartSvg(const Chart& c) {
  double xmax = 0, ymax = 0;
  for (const auto& s : c.series)
    for (auto [x, y] : s.points) {
      xmax = std::max(xmax, x);
      ymax = std::max(ymax, y);
    }
  const double xs = NiceStep(xmax), ys = NiceStep(ymax);
  xmax = std::max(xs, std::ceil(xmax / xs) * xs);
  ymax = std::max(ys, std::ceil(ymax / ys) * ys);
  const double pw = kW - kLeft - kRight, ph = kH - kTop - kBottom;
  auto X = [&](double x) { return kLeft + x / xmax * pw; };
  auto Y = [&](double y) { return kTop + ph - y / ymax * ph; };

  std::string o = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\" font-size=\"13\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
      kW, kH);
  o += fmt::format("<text x=\"{}\" y=\"28\" font-size=\"16\" text-anchor=\"middle\">{}</text>\n", kLeft + pw / 2,
                   Escape(c.title));
  for (double t = 0; t <= xmax + xs / 2; t += xs)
    o += fmt::format("<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#ddd\"/>"
                     "<text x=\"{0:.1f}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>\n",
                     X(t), kTop, kTop + ph, kTop + ph + 18, Tick(t));
  for (double t = 0; t <= ymax + ys / 2; t += ys)
    o += fmt::format("<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#ddd\"/>"
                     "<text x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\">{5}</text>\n",
                     kLeft, Y(t), kLeft + pw, kLeft - 8, Y(t) + 4, Tick(t));
  o += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n", kLeft,
                   kTop, pw, ph);
  o += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", kLeft + pw / 2, kH - 20,
                   Escape(c.x_label));
  o += fmt::format("<text transform=\"translate(22,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
                   kTop + ph / 2, Escape(c.y_label));
  for (size_t i = 0; i < c.series.size(); ++i) {
    auto pts = c.series[i].points;
    std::sort(pts.begin(), pts.end());
    const char* color = kColors[i % std::size(kColors)];
    std::string poly;
    for (auto [x, y] : pts) poly += fmt::format("{:.1f},{:.1f} ", X(x), Y(y));
    o += fmt::format("<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>\n", poly, color);
    for (auto [x, y] : pts)
      o += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3.5\" fill=\"{}\"/>\n", X(x), Y(y), color);
    const double ly = kTop + 10 + 22 * static_cast<double>(i);
    o += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"{3}\" stroke-width=\"3\"/>"
                     "<text x=\"{4}\" y=\"{5}\">{6}</text>\n",
                     kW - kRight + 15, ly, kW - kRight + 40, color, kW - kRight + 47, ly + 4,
                     Escape(c.series[i].name));
  }
  o += "</svg>\n";
  return o;
}

std::string RenderPng(const std::string& svg_path, const std::string& png_path) {
  std::vector<std::string> args = {"rsvg-convert", "--format=png", "-o", png_path, svg_path};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid;
  if (::posix_spawnp(&pid, "rsvg-convert", nullptr, nullptr, argv.data(), environ) != 0)
    return "rsvg-convert not found (Debian: librsvg2-bin)";
  int st = 0;
  ::waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return "rsvg-convert failed on " + svg_path;
  return "";
}

}  // namespace vecwal::tools
