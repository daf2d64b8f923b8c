// A line chart written as SVG by hand (no plotting dependency), and its PNG
// rendering through rsvg-convert (librsvg2-bin) when that is installed.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace vecwal::tools {

struct Series {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y), drawn in x order
};

struct Chart {
  std::string title, x_label, y_label;
  std::vector<Series> series;
};

std::string LineChartSvg(const Chart& chart);

// Renders `svg_path` to `png_path`; returns "" or why it could not.
std::string RenderPng(const std::string& svg_path, const std::string& png_path);

}  // namespace vecwal::tools
