#pragma once
// The examples' SVG plotting: round axis ticks (RoundAxis, shared by every
// plot) and a deliberately small line-plot writer (one panel, any number of
// named polylines, linear or log-10 y axis). No dependencies.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace loftq_common {

struct Line {
  std::string name;
  std::vector<double> x, y;
  std::string color = "#1f77b4";
  bool dashed = false;
};

// An axis range widened to whole multiples of a round step (1, 2 or 5 times a
// power of ten), so every tick label is short: 0.40, 0.45, ... rather than
// 0.4127, 0.4523, ... Ticks run from lo to hi in steps of `step`, printed with
// `decimals` decimals.
struct RoundAxis {
  double lo = 0, hi = 1, step = 0.2;
  int decimals = 1;
};

// About `target` ticks over [lo, hi]. Data that never goes below zero (losses,
// errors) keeps the axis at or above zero.
inline RoundAxis round_axis(double lo, double hi, int target = 5) {
  const bool non_negative = lo >= 0;
  if (!(hi > lo)) hi = lo + (lo != 0 ? std::abs(lo) * 1e-3 : 1e-3);
  const double raw = (hi - lo) / target, p = std::pow(10.0, std::floor(std::log10(raw))), f = raw / p;
  RoundAxis a;
  a.step = (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
  a.lo = std::floor(lo / a.step) * a.step;
  a.hi = std::ceil(hi / a.step) * a.step;
  if (non_negative) a.lo = std::max(a.lo, 0.0);
  a.decimals = std::max(0, static_cast<int>(-std::floor(std::log10(a.step) + 1e-9)));
  return a;
}

// v with `decimals` decimals, for coordinates and tick labels.
inline std::string fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

inline std::string svg_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<')
      o += "&lt;";
    else if (c == '>')
      o += "&gt;";
    else if (c == '&')
      o += "&amp;";
    else
      o += c;
  }
  return o;
}

inline bool write_line_plot(const std::string& path, const std::string& title, const std::string& xlabel,
                            const std::string& ylabel, const std::vector<Line>& lines, bool log_y) {
  const double W = 780, H = 460, L = 100, R = 220, T = 40, B = 60;
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  auto ty = [&](double v) { return log_y ? std::log10(std::max(v, 1e-300)) : v; };
  for (const auto& l : lines)
    for (std::size_t i = 0; i < l.x.size(); ++i) {
      x0 = std::min(x0, l.x[i]);
      x1 = std::max(x1, l.x[i]);
      y0 = std::min(y0, ty(l.y[i]));
      y1 = std::max(y1, ty(l.y[i]));
    }
  if (!(x1 > x0)) x1 = x0 + 1;
  if (!(y1 > y0)) y1 = y0 + 1;
  // Linear axes get round ticks (and a y axis that stays at >= 0 for
  // non-negative data); a log axis keeps its decades' span with a 5% margin.
  const RoundAxis xa = round_axis(x0, x1), ya = round_axis(y0, y1);
  x0 = xa.lo;
  x1 = xa.hi;
  if (log_y) {
    const double pad = 0.05 * (y1 - y0);
    y0 -= pad;
    y1 += pad;
  } else {
    y0 = ya.lo;
    y1 = ya.hi;
  }
  auto px = [&](double v) { return L + (v - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double v) { return T + (y1 - ty(v)) / (y1 - y0) * (H - T - B); };
  std::ostringstream o;
  o.precision(4);
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" << svg_escape(title)
    << "</text>\n";
  o << "<rect x=\"" << L << "\" y=\"" << T << "\" width=\"" << W - L - R << "\" height=\"" << H - T - B
    << "\" fill=\"none\" stroke=\"#333\"/>\n";
  const int ny = log_y ? 5 : static_cast<int>(std::lround((y1 - y0) / ya.step));
  for (int k = 0; k <= ny; ++k) {  // y ticks and grid lines
    const double yv = y0 + (y1 - y0) * k / ny;
    const double ypix = T + (y1 - yv) / (y1 - y0) * (H - T - B);
    o << "<line x1=\"" << L << "\" x2=\"" << W - R << "\" y1=\"" << ypix << "\" y2=\"" << ypix
      << "\" stroke=\"#ddd\"/>\n<text x=\"" << L - 6 << "\" y=\"" << ypix + 4 << "\" text-anchor=\"end\">";
    if (log_y)
      o << std::pow(10.0, yv);
    else
      o << fixed(yv, ya.decimals);
    o << "</text>\n";
  }
  const int nx = static_cast<int>(std::lround((x1 - x0) / xa.step));
  for (int k = 0; k <= nx; ++k) {  // x ticks
    const double xv = x0 + xa.step * k;
    o << "<text x=\"" << px(xv) << "\" y=\"" << H - B + 18 << "\" text-anchor=\"middle\">" << fixed(xv, xa.decimals)
      << "</text>\n";
  }
  o << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 15 << "\" text-anchor=\"middle\">" << svg_escape(xlabel)
    << "</text>\n<text x=\"16\" y=\"" << (T + H - B) / 2 << "\" text-anchor=\"middle\" transform=\"rotate(-90 16 "
    << (T + H - B) / 2 << ")\">" << svg_escape(ylabel) << (log_y ? " (log scale)" : "") << "</text>\n";
  for (std::size_t k = 0; k < lines.size(); ++k) {
    const auto& l = lines[k];
    o << "<polyline fill=\"none\" stroke=\"" << l.color << "\" stroke-width=\"2\""
      << (l.dashed ? " stroke-dasharray=\"6 4\"" : "") << " points=\"";
    for (std::size_t i = 0; i < l.x.size(); ++i) o << px(l.x[i]) << "," << py(l.y[i]) << " ";
    o << "\"/>\n";
    const double ly = T + 14 + 20.0 * static_cast<double>(k);
    o << "<line x1=\"" << W - R + 12 << "\" x2=\"" << W - R + 40 << "\" y1=\"" << ly << "\" y2=\"" << ly
      << "\" stroke=\"" << l.color << "\" stroke-width=\"2\"" << (l.dashed ? " stroke-dasharray=\"6 4\"" : "")
      << "/>\n<text x=\"" << W - R + 46 << "\" y=\"" << ly + 4 << "\">" << svg_escape(l.name) << "</text>\n";
  }
  o << "</svg>\n";
  std::ofstream f(path);
  f << o.str();
  return static_cast<bool>(f);
}

}  // namespace loftq_common
