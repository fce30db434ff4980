// Self-contained HTML reports of a plan comparison (tandem diff --html): no scripts, no network, inline SVG.
// Per-layer absmax of both plans on a log scale, a layer x stage heat map of rel_l2 / tolerance, the diff's text
// report and a table of every compared tap of the step shown.
#pragma once
#include <string>
#include <vector>

namespace tandem {

struct ReportCell {
  std::string tap;  // "L3.attention", "embed", ...
  double rel_l2 = 0, absmax_a = 0, absmax_b = 0;
  bool bad = false;  // beyond the tolerance, or non-finite on side a only
};

struct DiffReport {
  std::string title, label_a, label_b, text;  // text: the diff's terminal report
  int n_layers = 0, step = 0;
  double tol = 0;
  std::vector<ReportCell> cells;  // the step's compared taps, in execution order
};

std::string diff_report_html(const DiffReport& r);

}  // namespace tandem
