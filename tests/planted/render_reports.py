#!/usr/bin/env python3
"""Renders tandem's HTML reports in headless Chromium and checks what a person would see in the screenshot.

    render_reports.py TANDEM FIXTURES OUTDIR

1. `tandem diff` with a planted bug (layer 1's K/V append skipped) on the llama fixture writes a report; its
   screenshot must show the layer x stage heat map with 15 green cells and 9 red ones in that proportion (the
   cells up to L1.rope agree, L1.kv_write .. L1.mlp_residual do not) and both plans' absmax series (#d62728, #1f77b4).
2. `tandem trace --html` on the same model must show its absmax series and heat map.
Exit 0 when every check holds, 1 when one fails, 77 (ctest: skipped) when no headless Chromium is installed.
The PNG is decoded here (zlib + the five PNG filters), so the check needs nothing beyond Python and Chromium.
"""
import os
import shutil
import struct
import subprocess
import sys
import zlib

BROWSERS = ["chromium-headless-shell", "chromium", "chromium-browser"]


def find_browser():
    for b in BROWSERS:
        p = shutil.which(b)
        if p:
            return p
    return None


def screenshot(browser, html, png, width=1280, height=1400):
    if os.path.exists(png):
        os.remove(png)
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--window-size={width},{height}", f"--screenshot={png}", "file://" + os.path.abspath(html)]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=False)
    if not os.path.exists(png):
        raise SystemExit(f"FAIL: {browser} wrote no screenshot of {html}")


def decode_png(path):
    """-> (width, height, rows of (r, g, b) tuples) for 8-bit RGB/RGBA non-interlaced PNGs."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0, f"PNG kind {depth}/{color}/{interlace}"
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev, i = [], bytearray(stride), 0
    for _ in range(h):
        f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x:x + 3]) for x in range(0, stride, bpp)])
        prev = line
    return w, h, rows


def count(rows, rgb, tol=6):
    r0, g0, b0 = rgb
    return sum(1 for row in rows for (r, g, b) in row
               if abs(r - r0) <= tol and abs(g - g0) <= tol and abs(b - b0) <= tol)


def span(rows, rgb, tol=10):
    """Horizontal extent in pixels of a colour: a plotted series spans the plot (~560 px); its legend text alone
    spans less than 350."""
    r0, g0, b0 = rgb
    xs = [x for row in rows for x, (r, g, b) in enumerate(row)
          if abs(r - r0) <= tol and abs(g - g0) <= tol and abs(b - b0) <= tol]
    return max(xs) - min(xs) if xs else 0


def main():
    tandem, fixtures, out = sys.argv[1:4]
    browser = find_browser()
    if not browser:
        print("SKIPPED: no headless Chromium (" + ", ".join(BROWSERS) + "); tools/setup.sh installs one")
        return 77
    os.makedirs(out, exist_ok=True)
    model = os.path.join(fixtures, "llama")
    failures = []

    diff_html, diff_png = os.path.join(out, "diff.html"), os.path.join(out, "diff.png")
    r = subprocess.run([tandem, "diff", "-m", model, "--prompt-ids", "1,5,9,20,33", "-n", "2", "--a", "reference",
                        "--b", "reference", "--variant-a", "kv_write=test_skip_layer1", "--html", diff_html],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 1:
        failures.append(f"diff exit {r.returncode} (want 1): {r.stdout[-500:]} {r.stderr[-500:]}")
    screenshot(browser, diff_html, diff_png)
    _, _, rows = decode_png(diff_png)
    green, red = count(rows, (0x4c, 0xaf, 0x50)), count(rows, (255, 0, 0))
    series_a, series_b = span(rows, (0xd6, 0x27, 0x28)), span(rows, (0x1f, 0x77, 0xb4))
    print(f"diff report: green {green} px, red {red} px (cells 15 : 9 -> ratio {green / max(red, 1):.2f}, want "
          f"1.67), series a spans {series_a} px, series b {series_b} px")
    if red < 9 * 50 or not 1.67 * 0.85 <= green / max(red, 1) <= 1.67 * 1.15:
        failures.append("diff heat map: the green/red cell areas are not 15:9")
    if series_a < 450 or series_b < 450:
        failures.append("diff plot: a series is missing")

    trace_html, trace_png = os.path.join(out, "trace.html"), os.path.join(out, "trace.png")
    r = subprocess.run([tandem, "trace", "-m", model, "--prompt-ids", "1,5,9,20,33", "-n", "2", "--html",
                        trace_html], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        failures.append(f"trace exit {r.returncode}: {r.stderr[-500:]}")
    screenshot(browser, trace_html, trace_png)
    _, _, rows = decode_png(trace_png)
    # Series colours of the trace plot: the first steps' absmax lines and the dashed attention-logit line.
    step0, logits = span(rows, (0xd6, 0x27, 0x28)), span(rows, (0x1f, 0x77, 0xb4))
    print(f"trace report: step-0 series spans {step0} px, attention-logit series {logits} px")
    if step0 < 450 or logits < 450:
        failures.append("trace plot: a series is missing")

    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
