"""The ledger's claims on over-optimisation (see :mod:`kltutor.claims`)."""

from __future__ import annotations

import math

from kltutor.claims._core import _claim, _require


@_claim(
    "bon-kl",
    "Over-optimisation",
    r"$\KL(\pi_\text{bon}\|\piref)\le\log n-\frac{n-1}{n}$, with equality iff the reward has no atoms under $\piref$ "
    r"(a continuous distribution). Any discrete reference gives strictly less, even when every response has its "
    r"own reward, because two of the $n$ draws can be the same response (two equally likely responses, $n=2$: 0.1308 against 0.1931).",
    "ties among the draws broken uniformly at random",
    "sec-overoptimization-best-of-n",
    cheatsheet=True,
    refuted=(r"without ties", r"never tie", r"only without ties"),
    needs_condition=(
        (
            r"(?:log n\s*-\s*\(n\s*-\s*1\)\s*/\s*n|\\log n\s*-\s*\\frac\{n-1\}\{n\}|log n-\(n-1\)/n)"
            r"[^.;]{0,60}\b(?:is (?:the )?exact|as exact|exactly|equality|equal to the KL)\b"
            r"|\b(?:equality|exact KL is|KL is exactly)\b[^.;]{0,40}(?:log n\s*-\s*\(n|\\log n\s*-\s*\\frac)",
            r"continuous|atom",
        ),
    ),
)
def _bon_kl():
    import torch

    from kltutor import overoptimization as oo
    from kltutor.derivations import overoptimization as overoptimization_proofs

    _require(overoptimization_proofs.best_of_n_continuous_kl(), "sympy, continuous case")
    _require(overoptimization_proofs.best_of_n_kl_bound_with_ties(), "sympy, 0/1 reward")
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for _ in range(100):
        k = int(torch.randint(2, 30, (1,), generator=g))
        p = torch.distributions.Dirichlet(torch.ones(k, dtype=torch.float64)).sample()
        r = torch.randperm(k, generator=g).double()
        for n in (2, 8, 64):
            ratio = oo.best_of_n_kl(p, r, n) / oo.best_of_n_kl_formula(n)
            _require(ratio < 1, "distinct rewards on a discrete support: strictly below the formula")
            worst = max(worst, ratio)
    two, formula = oo.best_of_n_kl([0.5, 0.5], [0.0, 1.0], 2), oo.best_of_n_kl_formula(2)
    near = oo.best_of_n_kl([1e-3] * 1000, list(range(1000)), 4) / oo.best_of_n_kl_formula(4)
    _require(near > 0.9999, "many equally likely responses approach the continuous case")
    return {
        "two equally likely responses, n = 2: exact": two,
        "log 2 - 1/2": formula,
        "1000 equally likely responses, n = 4: exact / formula": near,
    }


@_claim(
    "bon-kl-cap",
    "Over-optimisation",
    r"Best-of-$n$'s KL never exceeds $-\log\piref(\text{top reward class})$: for a 0/1 reward at most $\log(1/p)$, however large $n$.",
    "discrete reward",
    "sec-overoptimization-best-of-n",
)
def _bon_kl_cap():
    from kltutor import overoptimization as oo

    p = 0.1
    kls = [oo.best_of_n_kl([p, 1 - p], [1.0, 0.0], n) for n in (1, 16, 256, 4096)]
    _require(all(a <= b for a, b in zip(kls, kls[1:])) and kls[-1] <= math.log(1 / p), "capped")
    return {"p = 0.1, n = 4096": kls[-1], "log(1/p)": math.log(1 / p)}


@_claim(
    "gao-peak-budget",
    "Over-optimisation",
    r"For Gao et al.'s best-of-$n$ form $R(d)=d(\alpha-b\,d)$, $d=\sqrt\KL$: $d^*=\alpha/2b$, $\KL^*=\alpha^2/4b^2$, "
    r"$R^*=\alpha^2/4b$; stopping at $\KL^*/2$ keeps $\sqrt2-\tfrac12\approx91\%$ of the peak gain (RL form "
    r"$d(\alpha-b\log d)$: $\approx95\%$).",
    "coefficients fitted on gold evaluations, for one reward model; sequence-level KL",
    "sec-overoptimization-budget",
    cheatsheet=True,
)
def _gao_peak_budget():
    from kltutor import overoptimization as oo
    from kltutor.derivations import overoptimization as overoptimization_proofs

    _require(
        overoptimization_proofs.bon_peak()
        and overoptimization_proofs.rl_peak()
        and overoptimization_proofs.stopping_fraction(),
        "sympy",
    )
    bon, rl = float(oo.gold_fraction_at_kl_fraction(0.5, "bon")), float(oo.gold_fraction_at_kl_fraction(0.5, "rl"))
    _require(abs(bon - (math.sqrt(2) - 0.5)) < 1e-12, "sqrt 2 - 1/2")
    return {"gain kept at KL*/2, best-of-n form": bon, "RL form": rl}


@_claim(
    "proxy-up-gold-down",
    "Over-optimisation",
    r"Optimising a learned proxy raises the proxy reward monotonically along the KL-regularised family while the "
    r"gold reward rises, peaks and falls.",
    "a misspecified proxy (chapter 6's linear proxy fitted to 300 comparisons); KL is the x-axis",
    "sec-overoptimization-synthetic",
    cheatsheet=True,
)
def _proxy_up_gold_down():
    import numpy as np

    from kltutor import overoptimization as oo

    world = oo.make_world(4096, 4, 1.0, seed=0)
    proxy = oo.proxy_from_comparisons(world, 300, seed=1)
    sweep = oo.tilted_sweep(world, proxy, [float(b) for b in np.logspace(1, -1.3, 24)])
    k = int(np.argmax(sweep["gold"]))
    _require(
        bool(np.all(np.diff(sweep["proxy"]) > 0)) and 0 < k < 23 and sweep["gold"][-1] < sweep["gold"][k], "inverted U"
    )
    return {
        "KL at the gold peak": sweep["kl"][k],
        "gold gain at the peak": sweep["gold"][k],
        "gold gain at the smallest beta": sweep["gold"][-1],
    }


@_claim(
    "penalty-equals-early-stopping",
    "Over-optimisation",
    r"Along natural-gradient (mirror-descent) iterates a KL penalty and early stopping trace the same gold-versus-KL "
    r"curve: every iterate is $\piref e^{c_tr}/Z$.",
    "iterates that stay in the tilted family",
    "sec-overoptimization-penalty",
)
def _penalty_equals_early_stopping():
    from kltutor.derivations import overoptimization as overoptimization_proofs

    _require(overoptimization_proofs.mirror_descent_stays_tilted(), "sympy")
    return {"iterates stay tilted": True}


@_claim(
    "token-mean-kl",
    "Over-optimisation",
    r"A logged per-token *mean* KL is the sequence KL divided by the length: for $T$ i.i.d. tokens the sequence KL is "
    r"$T$ times the token KL, so $\sqrt\KL$ budgets depend on which one is logged.",
    "i.i.d. tokens (in general: the chain rule)",
    "sec-overoptimization-seq-token",
)
def _token_mean_kl():
    import torch

    from kltutor import overoptimization as oo

    p, q = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64), torch.tensor([1 / 3] * 3, dtype=torch.float64)
    sp_, sq = p, q
    for _ in range(3):
        sp_, sq = torch.outer(sp_, p).flatten(), torch.outer(sq, q).flatten()
    ratio = oo.kl_categorical(sp_, sq) / oo.kl_categorical(p, q)
    _require(abs(ratio - 4) < 1e-12, "T = 4")
    return {"sequence KL / token KL, T = 4": ratio}


@_claim(
    "more-data-plateau",
    "Over-optimisation",
    r"More comparisons do not keep raising the gold peak: on the toy the mean peak gain over comparison sets rises "
    r"from 100 to 300 comparisons, then stays within the spread of one set up to 10,000, while that spread shrinks "
    r"at every size.",
    "chapter 6's toy (linear proxy, 20 comparison sets of each size); a statement about this toy, not a law",
    "sec-overoptimization-data",
    refuted=(r"[Mm]ore (?:comparison )?data raises the gold peak",),
)
def _more_data_plateau():
    import numpy as np

    from kltutor import overoptimization as oo

    world = oo.make_world(4096, 4, 1.0, seed=0)
    betas = [float(b) for b in np.logspace(1, -1.3, 24)]
    sizes = (100, 300, 1000, 10000)
    g = {
        n: oo.spread(oo.fits_over_comparison_sets(world, n, list(range(1, 21)), betas=betas)["tilted"]["peak_gain"])
        for n in sizes
    }
    se = {n: v.sd / v.n**0.5 for n, v in g.items()}
    rise = (g[300].mean - g[100].mean) / (se[100] ** 2 + se[300] ** 2) ** 0.5
    _require(rise > 3 and g[300].mean - g[100].mean < g[100].sd, "a rise from 100 to 300, within one set's spread")
    _require(all(abs(g[n].mean - g[300].mean) < g[300].sd for n in sizes[2:]), "a plateau within the spread")
    _require(all(g[a].sd > g[b].sd for a, b in zip(sizes, sizes[1:])), "the spread shrinks")
    return {
        "mean peak gain, 100": g[100].mean,
        "300": g[300].mean,
        "10,000": g[10000].mean,
        "sd over sets, 100": g[100].sd,
        "sd, 10,000": g[10000].sd,
        "rise 100 -> 300 (standard errors)": rise,
    }
