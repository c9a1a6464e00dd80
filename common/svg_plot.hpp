#pragma once
// A deliberately small SVG line-plot writer for the examples: one panel, any
// number of named polylines, linear or log-10 y axis. No dependencies.

#include <algorithm>
#include <cmath>
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

inline std::string svg_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else o += c;
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
  const double pad = 0.05 * (y1 - y0);
  y0 -= pad;
  y1 += pad;
  auto px = [&](double v) { return L + (v - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double v) { return T + (y1 - ty(v)) / (y1 - y0) * (H - T - B); };
  std::ostringstream o;
  o.precision(4);
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" << svg_escape(title) << "</text>\n";
  o << "<rect x=\"" << L << "\" y=\"" << T << "\" width=\"" << W - L - R << "\" height=\"" << H - T - B
    << "\" fill=\"none\" stroke=\"#333\"/>\n";
  for (int k = 0; k <= 5; ++k) {  // ticks
    const double xv = x0 + (x1 - x0) * k / 5, yv = y0 + (y1 - y0) * k / 5;
    const double yl = log_y ? std::pow(10.0, yv) : yv;
    const double ypix = T + (y1 - yv) / (y1 - y0) * (H - T - B);
    o << "<line x1=\"" << L << "\" x2=\"" << W - R << "\" y1=\"" << ypix << "\" y2=\"" << ypix
      << "\" stroke=\"#ddd\"/>\n<text x=\"" << L - 6 << "\" y=\"" << ypix + 4 << "\" text-anchor=\"end\">" << yl
      << "</text>\n<text x=\"" << px(xv) << "\" y=\"" << H - B + 18 << "\" text-anchor=\"middle\">" << xv << "</text>\n";
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
    o << "<line x1=\"" << W - R + 12 << "\" x2=\"" << W - R + 40 << "\" y1=\"" << ly << "\" y2=\"" << ly << "\" stroke=\""
      << l.color << "\" stroke-width=\"2\"" << (l.dashed ? " stroke-dasharray=\"6 4\"" : "") << "/>\n<text x=\""
      << W - R + 46 << "\" y=\"" << ly + 4 << "\">" << svg_escape(l.name) << "</text>\n";
  }
  o << "</svg>\n";
  std::ofstream f(path);
  f << o.str();
  return static_cast<bool>(f);
}

}  // namespace loftq_common
