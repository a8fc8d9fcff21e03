"""Where variance reduction pays: a regime map of GVM against uniform budgets on the exact models.

On the exact log-linear latent-CoT models of `gvm_mini.synthetic` (8 prompts, 6 rationales, 4
features) this sweeps

* the average budget per prompt and M-step, ``b = N/m`` in {1, 2, 4, 8, 16, 32};
* the spread of the starting pass rates: ``narrow`` (0.40..0.60) and ``wide`` (0.005..0.90, three
  prompts below 0.05);
* the step size ``eta`` in {gamma/2, gamma, 4 gamma, 16 gamma}; Theorem 1 needs ``eta <= gamma``
  (Theorem 2 ``eta <= gamma/2``), so 4 gamma and 16 gamma are *outside the theorems' range*;

and, per cell and over seeds, compares uniform budgets with two GVM variants, both through
`gvm_mini.synthetic.run_em` (Algorithm 1, k = 5 M-steps per E-step, Lemma-1 estimator):

* ``gvm``: Proposition 1 with the exact ``p_i`` and ``G_i`` (the theory's allocation, no pilot), at least
  one sample per prompt, so the estimator is unbiased as the theorems assume;
* ``gvm_pilot``: Algorithm 2, ``p_i`` and ``G_i`` estimated from ``N' = 8`` pilot samples per prompt
  (the paper's main setting), which cost ``m N'`` extra samples per E-step; as in the official code a
  prompt with no accepted pilot gets no sample, so the gradient is biased there (recorded as
  ``bias_sq_over_omega_uniform``).

Reported per cell (mean over seeds, spread from a bootstrap over seeds):

* ``omega_ratio``: Omega(GVM) / Omega(uniform) over the first T E-steps (Omega = sum of the exact
  variances V(g) along the run, `gvm_mini.theory.omega`);
* ``speedup``: E-steps uniform needs to bring its mean L(theta) to its own final level (the mean of its
  curve over the last quarter of its T E-steps), divided by the E-steps GVM needs to reach that level
  (linear interpolation between E-steps; the paper's accounting, update steps, pilot not counted). GVM
  runs 2T E-steps so that a slowdown is measured too ("reached": false if it never gets there);
* ``speedup_samples`` (``gvm_pilot`` only): the same at equal *samples* with the pilot counted, as the
  demo counts it: ``speedup * k b / (k b + N')``;
* ``theorem1_ratio``: Omega / ((gamma/eta) Delta1) per rule; Theorem 1 guarantees a decrease when it is
  below 1 (`gvm_mini.theory.negativity_condition`; no theorem stands behind it for eta > gamma).

    nice -n 10 python bench/regime_map.py             # the full map: 374 s of one core (17 min wall, shared CPU)
    python bench/regime_map.py --cell wide 4 4 --seeds 96   # re-measure one cell
    python bench/regime_map.py --replot               # figure and table from results/regime_map.json
    python bench/regime_map.py --smoke                # seconds (CI)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from gvm_mini import allocation as A
from gvm_mini import synthetic as S

RESULTS = Path(__file__).resolve().parent / "results"
BUDGETS = (1, 2, 4, 8, 16, 32)
SPREADS = {"narrow": (0.40, 0.60), "wide": (0.005, 0.90)}
STEPS = (0.5, 1.0, 4.0, 16.0)  # multiples of gamma
THEOREM_RANGE = 1.0  # Theorem 1: eta <= gamma
M, K_RAT, D_FEAT, K_M, N_PILOT = 8, 6, 4, 5, 8
VARIANTS = ("gvm", "gvm_pilot")


def crossing(curve: np.ndarray, target: float) -> float:
    """First (fractional, linearly interpolated) index at which ``curve`` falls to ``target``;
    ``inf`` if it never does."""
    hit = np.flatnonzero(curve <= target)
    if hit.size == 0:
        return float("inf")
    j = int(hit[0])
    if j == 0:
        return 0.0
    a, b = curve[j - 1], curve[j]
    return float(j - 1 + (a - target) / (a - b))


def final_level(mu_u: np.ndarray) -> float:
    """Uniform's "final L": the mean of its mean curve over the last quarter of its E-steps
    (``round(3T/4)..T``), so that one noisy last point does not decide the target."""
    T = len(mu_u) - 1
    return float(mu_u[int(round(0.75 * T)):].mean())


def times_to_target(L_uni: np.ndarray, L_gvm: np.ndarray) -> tuple[float, float]:
    """(E-steps uniform's mean curve needs to reach its own final level, E-steps GVM's needs; inf if
    never). ``L_uni`` (seeds, T+1) and ``L_gvm`` (seeds, T'+1) are L(theta) per E-step."""
    mu_u, mu_g = L_uni.mean(0), L_gvm.mean(0)
    target = final_level(mu_u)
    return crossing(mu_u, target), crossing(mu_g, target)


def speedup(L_uni: np.ndarray, L_gvm: np.ndarray) -> float:
    """E-steps for uniform to reach its own final level / E-steps for GVM (0 if GVM never does
    within its horizon)."""
    t_u, t_g = times_to_target(L_uni, L_gvm)
    if t_g == 0.0:  # at the target from the start (the level is above L(theta_0): the runs got worse)
        return 1.0 if t_u == 0.0 else float("inf")
    return t_u / t_g  # 0 if GVM never gets there within its horizon


def bootstrap(fn, arrays, B: int, rng) -> np.ndarray:
    """``fn(*resampled)`` over ``B`` bootstrap resamples of the seeds of each array (independently)."""
    out = np.empty(B)
    for b in range(B):
        out[b] = fn(*[a[rng.integers(0, len(a), len(a))] for a in arrays])
    return out


def run_cell(model, budget_pp: int, step: float, seeds: int, T: int, B: int) -> dict:
    gam = S.gamma(model)
    eta = step * gam
    N = budget_pp * model.m
    curves, om, d1, bias = {}, {}, {}, {}
    for rule in ("uniform", *VARIANTS):
        horizon = T if rule == "uniform" else 2 * T
        # pilot variant as the official code: prompts with no accepted pilot (p^ = 0) get n_i = 0
        kw = {"n_pilot": N_PILOT, "min_per_prompt": 0} if rule == "gvm_pilot" else {}
        trs = [S.run_em(model, "uniform" if rule == "uniform" else "gvm", N, horizon, K_M, eta, s, **kw)
               for s in range(seeds)]
        curves[rule] = np.array([tr.loss[::K_M] for tr in trs])  # (seeds, horizon+1), per E-step
        om[rule] = np.array([tr.variance[:T].sum() for tr in trs])
        d1[rule] = np.array([(tr.grad_bound[:T] ** 2).sum() for tr in trs])
        bias[rule] = np.array([tr.bias_sq[:T].sum() for tr in trs])
    # the allocation alone, at the same point: exact V(g) at theta0 under each rule's n (pilot: seed 0's draw)
    p0, (G0, _) = S.pass_rates(model, model.theta0), S.grad_moments(model, model.theta0)
    n_at = {"uniform": A.uniform(p0, G0, N, min_per_prompt=1), "gvm": A.allocate(p0, G0, N, min_per_prompt=1)}
    pp, Gp = S.pilot_estimates(model, model.theta0, N_PILOT, 0)
    n_at["gvm_pilot"] = A.allocate(pp, Gp, N, min_per_prompt=0)
    v0 = {r: S.estimator_variance(model, n, model.theta0) for r, n in n_at.items()}
    rng = np.random.default_rng(12345)
    cell = {"budget_per_prompt": budget_pp, "step": step, "eta": eta, "in_theorem_range": step <= THEOREM_RANGE,
            "final_level_uniform": final_level(curves["uniform"].mean(0)),
            "final_L_uniform": float(curves["uniform"][:, T].mean()),
            "final_L_uniform_se": float(curves["uniform"][:, T].std(ddof=1) / np.sqrt(seeds)),
            "theorem1_ratio_uniform": float(om["uniform"].mean() / (d1["uniform"].mean() / step))}
    for v in VARIANTS:
        sp = speedup(curves["uniform"], curves[v])
        t_u, t_g = times_to_target(curves["uniform"], curves[v])
        sp_b = bootstrap(speedup, [curves["uniform"], curves[v]], B, rng)
        ratio = om[v].mean() / om["uniform"].mean()
        ratio_b = bootstrap(lambda a, b: a.mean() / b.mean(), [om[v], om["uniform"]], B, rng)
        dL = curves[v][:, T] - curves["uniform"][:, T]  # independent seeds: se from both
        se_dL = np.sqrt(curves[v][:, T].var(ddof=1) / seeds + curves["uniform"][:, T].var(ddof=1) / seeds)
        cell[v] = {
            "omega_ratio": float(ratio), "omega_ratio_se": float(ratio_b.std(ddof=1)),
            "variance_ratio_at_theta0": v0[v] / v0["uniform"], "n_at_theta0": n_at[v].tolist(),
            "speedup": sp, "speedup_se": float(np.std(sp_b[np.isfinite(sp_b)], ddof=1)),
            "reached": bool(np.isfinite(t_g)), "t_uniform": t_u, "t_gvm": t_g if np.isfinite(t_g) else None,
            "speedup_upper_bound": None if np.isfinite(t_g) else t_u / (2 * T),
            "bias_sq_over_omega_uniform": float(bias[v].mean() / om["uniform"].mean()),
            "speedup_p10_p90": [float(np.percentile(sp_b, 10)), float(np.percentile(sp_b, 90))],
            "final_L": float(curves[v][:, T].mean()), "final_L_minus_uniform": float(dL.mean()),
            "final_L_minus_uniform_se": float(se_dL),
            "theorem1_ratio": float(om[v].mean() / (d1[v].mean() / step)),
        }
        if v == "gvm_pilot":
            f = K_M * budget_pp / (K_M * budget_pp + N_PILOT)
            cell[v]["speedup_samples_factor"] = f
            cell[v]["speedup_samples"] = sp * f
            cell[v]["speedup_samples_p10_p90"] = [x * f for x in cell[v]["speedup_p10_p90"]]
    return cell


def value(c: dict, key: str) -> float:
    """A cell entry; ``error_ratio`` = (Ω + Σ‖bias‖²)/Ω_uniform, the mean squared error of the gradient
    relative to uniform's (bias only where a rule gives a prompt no sample: the pilot variant)."""
    if key == "error_ratio":
        return c["omega_ratio"] + c["bias_sq_over_omega_uniform"]
    return c[key]


def heatmap(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    budgets, steps, spreads = payload["budgets"], payload["steps"], list(payload["spreads"])
    panels = [("gvm", "omega_ratio", "Ω ratio GVM/uniform\n(exact p, G)"),
              ("gvm", "speedup", "speed-up in E-steps\n(exact p, G)"),
              ("gvm_pilot", "error_ratio", "(Ω + Σ bias²) ratio GVM/uniform\n(pilot N'=8, p̂=0 prompts dropped)"),
              ("gvm_pilot", "speedup", "speed-up in E-steps\n(pilot N'=8, pilot not counted)"),
              ("gvm_pilot", "speedup_samples", "speed-up at equal samples\n(pilot N'=8, pilot counted)")]
    fig, axes = plt.subplots(len(spreads), len(panels), figsize=(4.1 * len(panels), 3.5 * len(spreads) + 0.8),
                             squeeze=False)
    for r, spread in enumerate(spreads):
        cells = {(c["budget_per_prompt"], c["step"]): c for c in payload["cells"] if c["spread"] == spread}
        for j, (v, key, title) in enumerate(panels):
            ax = axes[r, j]
            Z = np.array([[value(cells[(b, s)][v], key) for b in budgets] for s in steps], dtype=float)
            logZ = np.log2(np.clip(Z, 1 / 16, 16))
            lim = 2.0
            ax.imshow(logZ, cmap="RdBu_r" if key in ("omega_ratio", "error_ratio") else "RdBu", aspect="auto",
                      norm=TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim))
            for a, s in enumerate(steps):
                for b, bud in enumerate(budgets):
                    z = Z[a, b]
                    c = cells[(budgets[b], s)][v]
                    if key.startswith("speedup") and not c["reached"]:
                        ub = c["speedup_upper_bound"]
                        z = ub if key == "speedup" else ub * c["speedup_samples_factor"]
                        logZ[a, b] = -4.0  # drawn as the darkest red (the cell's value, 0, clipped); white text
                        txt = f"<{z:.2f}\nn.r."
                    else:
                        txt = f"{z:.2f}" if z < 10 else f"{z:.0f}"
                    ax.text(b, a, txt, ha="center", va="center", fontsize=8,
                            color="white" if abs(logZ[a, b]) > 1.2 else "black")
            ax.set_xticks(range(len(budgets)), [str(b) for b in budgets], fontsize=8)
            ax.set_yticks(range(len(steps)), [f"{s:g}γ" + ("" if s <= THEOREM_RANGE else " *") for s in steps],
                          fontsize=8)
            ax.axhline(steps.index(THEOREM_RANGE) + 0.5, color="k", lw=1.2, ls="--")
            if r == len(spreads) - 1:
                ax.set_xlabel("samples per prompt per M-step (N/m)", fontsize=8)
            if j == 0:
                lo, hi = payload["spreads"][spread]
                ax.set_ylabel(f"{spread} spread (p0 {lo:g}..{hi:g})\nstep size η", fontsize=9)
            if r == 0:
                ax.set_title(title, fontsize=9)
    fig.suptitle("GVM vs uniform on the exact synthetic models (m=8, k=5, T=%d, %d seeds). Blue = GVM better. "
                 "* and below the dashed line: η > γ, outside the theorems' range. n.r.: GVM did not reach uniform's "
                 "final level within 2T E-steps" % (payload["T"], payload["seeds"]), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(payload: dict) -> str:
    def sp(c, key="speedup", f=1.0):
        return f"{c[key]:.2f} ± {c['speedup_se'] * f:.2f}" if c["reached"] else f"< {c['speedup_upper_bound'] * f:.2f} (n.r.)"

    rows = ["| spread | η | N/m | Ω ratio (exact) | speed-up (exact) | Ω ratio (pilot) | (Ω+bias²) ratio (pilot) "
            "| speed-up (pilot, E-steps) | speed-up (pilot counted, samples) | Ω/((γ/η)Δ1) uniform | final L uniform "
            "| ΔL_final GVM-exact |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in payload["cells"]:
        g, p = c["gvm"], c["gvm_pilot"]
        star = "" if c["in_theorem_range"] else " *"
        rows.append(
            f"| {c['spread']} | {c['step']:g}γ{star} | {c['budget_per_prompt']} | {g['omega_ratio']:.2f} ± "
            f"{g['omega_ratio_se']:.2f} | {sp(g)} | {p['omega_ratio']:.2f} ± {p['omega_ratio_se']:.2f} | "
            f"{value(p, 'error_ratio'):.2f} | {sp(p)} | {sp(p, 'speedup_samples', p['speedup_samples_factor'])} | "
            f"{c['theorem1_ratio_uniform']:.2f} | {c['final_L_uniform']:.4f} | {g['final_L_minus_uniform']:+.4f} ± "
            f"{g['final_L_minus_uniform_se']:.4f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=24)
    ap.add_argument("--T", type=int, default=20, help="E-steps of the uniform runs (GVM runs 2T)")
    ap.add_argument("--bootstrap", type=int, default=400)
    ap.add_argument("--smoke", action="store_true", help="budgets 1 and 8 x 2 spreads x steps gamma and 16 gamma, 3 seeds, T=4")
    ap.add_argument("--replot", action="store_true", help="redraw the figure and table from results/regime_map.json")
    ap.add_argument("--cell", nargs=3, metavar=("SPREAD", "STEP", "BUDGET"), default=None,
                    help="re-measure one cell (e.g. wide 4 4) with --seeds seeds; appends to results/regime_map_cells.jsonl")
    args = ap.parse_args()
    if args.replot:
        payload = json.loads((RESULTS / "regime_map.json").read_text())
        heatmap(payload, RESULTS / "regime_map.png")
        (RESULTS / "regime_map.md").write_text(markdown_table(payload) + "\n")
        print(f"figure -> {RESULTS / 'regime_map.png'}; table -> {RESULTS / 'regime_map.md'}")
        return
    if args.cell:
        spread, step, b = args.cell[0], float(args.cell[1]), int(args.cell[2])
        model = S.make_model(M, K_RAT, D_FEAT, seed=0, p_range=SPREADS[spread])
        t0 = time.perf_counter()
        cell = {"command": " ".join(["python bench/regime_map.py", *sys.argv[1:]]), "spread": spread, "seeds": args.seeds,
                "T": args.T, **run_cell(model, b, step, args.seeds, args.T, args.bootstrap)}
        cell["seconds"] = round(time.perf_counter() - t0, 1)
        for v in VARIANTS:
            c = cell[v]
            print(f"{spread} eta={step:g}γ N/m={b} ({args.seeds} seeds) {v}: Ω ratio {c['omega_ratio']:.2f} ± "
                  f"{c['omega_ratio_se']:.2f}; speed-up {c['speedup']:.2f} ± {c['speedup_se']:.2f} "
                  f"(p10-p90 {c['speedup_p10_p90'][0]:.2f}-{c['speedup_p10_p90'][1]:.2f}); final L minus uniform "
                  f"{c['final_L_minus_uniform']:+.4f} ± {c['final_L_minus_uniform_se']:.4f}")
        with open(RESULTS / "regime_map_cells.jsonl", "a") as f:
            f.write(json.dumps(cell) + "\n")
        print(f"results -> {RESULTS / 'regime_map_cells.jsonl'}")
        return
    budgets, steps = (BUDGETS, STEPS) if not args.smoke else ((1, 8), (1.0, 16.0))
    seeds, T, B = (3, 4, 50) if args.smoke else (args.seeds, args.T, args.bootstrap)
    t0 = time.perf_counter()
    payload = {"command": " ".join(["python bench/regime_map.py", *sys.argv[1:]]),
               "machine": {"platform": platform.platform(), "python": platform.python_version(),
                           "processor": platform.processor()}, "model": {"m": M, "K": K_RAT, "d": D_FEAT, "model_seed": 0}, "k": K_M, "n_pilot": N_PILOT,
               "T": T, "seeds": seeds, "budgets": list(budgets), "steps": list(steps),
               "spreads": {k: list(v) for k, v in SPREADS.items()}, "cells": []}
    for spread, pr in SPREADS.items():
        model = S.make_model(M, K_RAT, D_FEAT, seed=0, p_range=pr)
        payload["spreads_p0"] = payload.get("spreads_p0", {}) | {spread: S.pass_rates(model, model.theta0).round(4).tolist()}
        payload["gamma"] = S.gamma(model)
        for step in steps:
            for b in budgets:
                cell = {"spread": spread, **run_cell(model, b, step, seeds, T, B)}
                payload["cells"].append(cell)
                g, p = cell["gvm"], cell["gvm_pilot"]
                print(f"{spread:6s} eta={step:>4g}γ N/m={b:2d}: Ω ratio exact {g['omega_ratio']:.2f}, pilot "
                      f"{p['omega_ratio']:.2f}; speed-up exact {g['speedup']:.2f} ± {g['speedup_se']:.2f}, pilot "
                      f"{p['speedup']:.2f} (samples, pilot counted {p['speedup_samples']:.2f}); "
                      f"Ω/((γ/η)Δ1) uniform {cell['theorem1_ratio_uniform']:.2f}", flush=True)
    best = max(payload["cells"], key=lambda c: c["gvm"]["speedup"])
    best_p = max(payload["cells"], key=lambda c: c["gvm_pilot"]["speedup_samples"])
    payload["best_exact"] = {k: best[k] for k in ("spread", "step", "budget_per_prompt")} | {"speedup": best["gvm"]["speedup"]}
    payload["best_pilot_counted"] = ({k: best_p[k] for k in ("spread", "step", "budget_per_prompt")}
                                     | {"speedup_samples": best_p["gvm_pilot"]["speedup_samples"]})
    payload["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"best (exact p, G): {payload['best_exact']}")
    print(f"best (pilot counted): {payload['best_pilot_counted']}")
    RESULTS.mkdir(exist_ok=True)
    suffix = ".smoke" if args.smoke else ""
    fig = RESULTS / f"regime_map{suffix}.png"
    heatmap(payload, fig)
    out = RESULTS / f"regime_map{suffix}.json"
    out.write_text(json.dumps(payload, indent=1) + "\n")
    if not args.smoke:
        (RESULTS / "regime_map.md").write_text(markdown_table(payload) + "\n")
    print(f"{payload['seconds']} s; figure -> {fig}")
    print(f"results -> {out}")


if __name__ == "__main__":
    main()
