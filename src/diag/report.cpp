#include "diag/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "diag/taps.h"

namespace tandem {
namespace {

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

// Green at or below the tolerance, then yellow to red over three decades above it; grey when not compared.
std::string heat_color(const ReportCell* c, double tol) {
  if (!c) return "#dddddd";
  if (!std::isfinite(c->rel_l2) || (c->bad && c->rel_l2 <= tol)) return "#7f0000";
  if (c->rel_l2 <= tol) return "#4caf50";
  const double t = std::clamp(std::log10(c->rel_l2 / tol) / 3.0, 0.0, 1.0);
  return fmt::format("rgb(255,{},0)", int(220 * (1 - t)));
}

}  // namespace

std::string diff_report_html(const DiffReport& r) {
  std::map<std::string, const ReportCell*> by_tap;
  for (const ReportCell& c : r.cells) by_tap[c.tap] = &c;
  std::string h = fmt::format(
      "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{0}</title><style>"
      "body{{font-family:sans-serif;margin:20px}}pre{{background:#f4f4f4;padding:8px}}"
      "table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px;font-size:12px}}"
      ".bad{{color:#b00}}</style></head><body><h1>{0}</h1><p>a = {1}, b = {2} (reference side); step {3}; "
      "tolerance rel_l2 &le; {4:.1e}</p>",
      esc(r.title), esc(r.label_a), esc(r.label_b), r.step, r.tol);

  // Per-layer absmax of the residual stream (L*.mlp_residual), both plans, log scale.
  const int W = 640, H = 240, pad = 40, L = std::max(1, r.n_layers);
  double lo = INFINITY, hi = 0;
  for (int l = 0; l < r.n_layers; ++l)
    if (const auto it = by_tap.find(tap_name(Stage::mlp_residual, l)); it != by_tap.end())
      for (double v : {it->second->absmax_a, it->second->absmax_b})
        if (v > 0 && std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  if (!(hi > 0)) lo = 1, hi = 10;
  const double llo = std::floor(std::log10(lo)), lhi = std::max(llo + 1, std::ceil(std::log10(hi)));
  auto px = [&](int l) { return pad + (W - 2 * pad) * (L == 1 ? 0.5 : double(l) / double(L - 1)); };
  auto py = [&](double v) {
    const double lv = v > 0 && std::isfinite(v) ? std::log10(v) : llo;
    return H - pad - (H - 2 * pad) * (lv - llo) / (lhi - llo);
  };
  h += fmt::format("<h2>absmax per layer (L*.mlp_residual), log scale</h2><svg id=\"absmax\" width=\"{}\" "
                   "height=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">",
                   W, H);
  for (double d = llo; d <= lhi; d += 1)
    h += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#eee\"/><text x=\"2\" "
                     "y=\"{:.1f}\" font-size=\"10\">1e{}</text>",
                     pad, W - pad, py(std::pow(10, d)), py(std::pow(10, d)), py(std::pow(10, d)) + 3, int(d));
  for (int side = 0; side < 2; ++side) {
    std::string pts;
    for (int l = 0; l < r.n_layers; ++l)
      if (const auto it = by_tap.find(tap_name(Stage::mlp_residual, l)); it != by_tap.end())
        pts += fmt::format("{:.1f},{:.1f} ", px(l), py(side ? it->second->absmax_b : it->second->absmax_a));
    h += fmt::format("<polyline class=\"series\" points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" "
                     "stroke-dasharray=\"{}\"><title>{}</title></polyline>",
                     pts, side ? "#1f77b4" : "#d62728", side ? "4,3" : "", side ? "b" : "a");
  }
  h += fmt::format("<text x=\"{}\" y=\"14\" font-size=\"12\" fill=\"#d62728\">a: {}</text><text x=\"{}\" y=\"28\" "
                   "font-size=\"12\" fill=\"#1f77b4\">b: {}</text></svg>",
                   pad, esc(r.label_a), pad, esc(r.label_b));

  // Heat map: layers down, stages across.
  const int cw = 56, ch = 16, left = 40, top = 60;
  const int n_stages = int(Stage::mlp_residual) - int(Stage::attn_norm) + 1;  // the per-layer stages
  h += fmt::format("<h2>rel_l2 / tolerance, layer x stage</h2><svg id=\"heatmap\" width=\"{}\" height=\"{}\" "
                   "xmlns=\"http://www.w3.org/2000/svg\">",
                   left + cw * n_stages + 10, top + ch * r.n_layers + 10);
  for (int s = 0; s < n_stages; ++s)
    h += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"9\" transform=\"rotate(-40 {} {})\">{}</text>",
                     left + s * cw + 4, top - 4, left + s * cw + 4, top - 4,
                     stage_name(Stage(int(Stage::attn_norm) + s)));
  for (int l = 0; l < r.n_layers; ++l) {
    h += fmt::format("<text x=\"2\" y=\"{}\" font-size=\"10\">L{}</text>", top + l * ch + 12, l);
    for (int s = 0; s < n_stages; ++s) {
      const std::string tap = tap_name(Stage(int(Stage::attn_norm) + s), l);
      const auto it = by_tap.find(tap);
      const ReportCell* c = it == by_tap.end() ? nullptr : it->second;
      h += fmt::format("<rect class=\"cell{}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" "
                       "stroke=\"#fff\"><title>{}: {}</title></rect>",
                       c && c->bad ? " bad" : "", left + s * cw, top + l * ch, cw, ch, heat_color(c, r.tol), tap,
                       c ? fmt::format("rel_l2 {:.3e}", c->rel_l2) : std::string("not published by both plans"));
    }
  }
  h += "</svg><h2>report</h2><pre>" + esc(r.text) + "</pre><h2>taps of this step</h2><table><tr><th>tap</th>"
       "<th>rel_l2</th><th>absmax a</th><th>absmax b</th></tr>";
  for (const ReportCell& c : r.cells)
    h += fmt::format("<tr{}><td>{}</td><td>{:.3e}</td><td>{:.3e}</td><td>{:.3e}</td></tr>",
                     c.bad ? " class=\"bad\"" : "", c.tap, c.rel_l2, c.absmax_a, c.absmax_b);
  return h + "</table></body></html>\n";
}

}  // namespace tandem
