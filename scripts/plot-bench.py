#!/usr/bin/env python3
"""Draws scripts/bench.sh's JSON as two SVG charts (no plotting library needed):
per-login overhead over pam_permit against the number of enrolled users (one login at a time),
and against the number of concurrent logins (at the smallest N), for every tool measured.
A point whose logins did not all succeed is drawn hollow and labelled with the count.

    scripts/plot-bench.py RESULTS.json DIR   ->  DIR/per-login-users.svg, DIR/per-login-concurrency.svg
"""
import json
import math
import os
import sys

W, H = 760, 420
LEFT, RIGHT, TOP, BOTTOM = 70, 250, 50, 60
COLOURS = {
    "pam_twofold": "#1b6ca8",
    "pam_twofold (postgres)": "#5aa02c",
    "pam_twofold (postgres, sync standby)": "#9c6ade",
    "pam_google_authenticator": "#d1495b",
    "pam_oath": "#e39b2d",
}


def esc(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def log_ticks(lo, hi):
    ticks = []
    e = math.floor(math.log10(lo))
    while 10 ** e <= hi * 1.0001:
        for m in (1, 2, 5):
            v = m * 10 ** e
            if lo * 0.9999 <= v <= hi * 1.0001:
                ticks.append(v)
        e += 1
    return ticks


def fmt(v):
    return f"{v:g}" if v >= 0.01 else f"{v:.0e}"


def chart(title, xlabel, xs, x_labels, series, log_x):
    """series: {name: [(x, y, ok_text or None)]}; xs: the x positions (values)."""
    ys = [y for pts in series.values() for (_, y, _) in pts if y and y > 0]
    lo = 10 ** math.floor(math.log10(min(ys) * 0.7))
    hi = 10 ** math.ceil(math.log10(max(ys) * 1.3))
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x):
        if log_x:
            a, b = math.log10(min(xs)), math.log10(max(xs))
            t = 0.5 if a == b else (math.log10(x) - a) / (b - a)
        else:
            i = xs.index(x)
            t = 0.5 if len(xs) == 1 else i / (len(xs) - 1)
        return LEFT + 30 + t * (pw - 60)

    def py(y):
        t = (math.log10(max(y, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        return TOP + ph - t * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{esc(title)}</text>',
    ]
    for v in log_ticks(lo, hi):
        y = py(v)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt(v)}</text>')
    for x, label in zip(xs, x_labels):
        out.append(f'<text x="{px(x):.1f}" y="{TOP + ph + 18}" text-anchor="middle">{esc(label)}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{H - 18}" text-anchor="middle">{esc(xlabel)}</text>')
    out.append(
        f'<text transform="translate(18 {TOP + ph / 2}) rotate(-90)" text-anchor="middle">'
        "overhead over pam_permit, p50 (ms, log scale)</text>"
    )
    for k, (name, pts) in enumerate(series.items()):
        colour = COLOURS.get(name, "#333")
        pts = [(x, y, note) for (x, y, note) in pts if y is not None and y > 0]
        if len(pts) > 1:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for (x, y, _) in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for (x, y, note) in pts:
            fill = "white" if note else colour
            out.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4.5" fill="{fill}" '
                f'stroke="{colour}" stroke-width="2"/>'
            )
            if note:
                out.append(f'<text x="{px(x) + 7:.1f}" y="{py(y) - 7:.1f}" fill="{colour}">{esc(note)}</text>')
        ly = TOP + 10 + 20 * k
        out.append(f'<line x1="{LEFT + pw + 14}" y1="{ly}" x2="{LEFT + pw + 34}" y2="{ly}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{LEFT + pw + 40}" y="{ly + 4}" font-size="11">{esc(name)}</text>')
    out.append(
        f'<text x="{LEFT + pw + 14}" y="{TOP + ph}" font-size="10" fill="#555">hollow: not every</text>'
        f'<text x="{LEFT + pw + 14}" y="{TOP + ph + 12}" font-size="10" fill="#555">login succeeded</text>'
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def note_of(succeeded):
    if not succeeded:
        return None
    ok, total = succeeded.split("/")
    return None if ok == total else f"{ok}/{total} ok"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    results, outdir = json.load(open(sys.argv[1])), sys.argv[2]
    os.makedirs(outdir, exist_ok=True)
    ov, ok = results["overhead_ms"], results["succeeded"]
    tools = ["pam_twofold", "pam_google_authenticator", "pam_oath"]
    sizes = sorted({int(n) for t in tools for n in ov.get(t, {})})
    by_users = {
        t: [(n, ov[t].get(str(n)), note_of(ok.get(t, {}).get(str(n)))) for n in sizes if str(n) in ov.get(t, {})]
        for t in tools
        if t in ov
    }
    svg = chart(
        "One login at a time: cost against enrolled users",
        "enrolled users (log scale)",
        sizes,
        [f"{n:,}" for n in sizes],
        by_users,
        True,
    )
    open(os.path.join(outdir, "per-login-users.svg"), "w").write(svg)
    small = str(sizes[0])
    by_conc = {}
    for t in tools:
        pts = []
        for c, key in ((1, t), (8, f"{t}@8")):
            if small in ov.get(key, {}):
                pts.append((c, ov[key][small], note_of(ok.get(key, {}).get(small))))
        by_conc[t] = pts
    pg = results.get("postgres", {})
    for name, block in (
        ("pam_twofold (postgres)", pg),
        ("pam_twofold (postgres, sync standby)", pg.get("synchronous_standby", {})),
    ):
        o = block.get("overhead_ms", {})
        s = block.get("succeeded", {})
        by_conc[name] = [(int(c), o[c], note_of(s.get(c))) for c in ("1", "8") if c in o]
    svg = chart(
        f"Concurrent logins: cost at N = {int(small):,} users",
        "logins at once",
        [1, 8],
        ["1", "8"],
        by_conc,
        False,
    )
    open(os.path.join(outdir, "per-login-concurrency.svg"), "w").write(svg)
    print(f"plot-bench: {outdir}/per-login-users.svg, {outdir}/per-login-concurrency.svg")


main()
