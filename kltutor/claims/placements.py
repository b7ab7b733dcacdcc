"""The ledger's claims on placements (see :mod:`kltutor.claims`)."""

from __future__ import annotations

from kltutor.claims._core import _claim, _max_err, _require, _toy


@_claim(
    "k1-in-reward-exact",
    "Placements",
    r"On-policy, k1 in the reward (a detached penalty in the return-to-go) gives exactly the gradient of the "
    r"sequence-level reverse KL, at any length.",
    r"samples from $\pitheta$, penalties summed over tokens (no discounting)",
    "sec-placements-exact",
    cheatsheet=True,
)
def _k1_in_reward_exact():
    from kltutor import gradients as G

    pi, ref = _toy()
    errs = [
        _max_err(G.exact_kl_gradients(pi, ref, T)["k1-in-reward"], G.exact_kl_gradients(pi, ref, T)["true"])
        for T in (1, 3, 6)
    ]
    _require(max(errs) < 1e-12, "k1-in-reward must be exact")
    return {"max error over T = 1, 3, 6": "< 1e-12"}


@_claim(
    "k1-in-loss-zero",
    "Placements",
    r"On-policy, k1 in the loss has expected gradient zero: $\E_{\pitheta}[\nabla\log\pitheta]=0$. Under a "
    r"sampler $q\neq\pitheta$ (temperature, top-p/top-k) its expected logit update is $\pitheta-q$, not zero.",
    r"samples from $\pitheta$",
    "sec-placements-exact",
    cheatsheet=True,
    needs_condition=(
        (
            r"k1[- ]in[- ](?:the )?loss`?[^.;|]{0,60}?(?:does nothing|do nothing|regularises nothing|"
            r"(?:expected|mean) gradient (?:is )?(?:zero|0)|zero (?:expected gradient|mean|in expectation)|harmless)",
            r"[Oo]n-policy|on policy|samples from|sampled from \$?\\pitheta|E_\{?\\pitheta|E_\{?\\pi_\\theta|"
            r"sampler|tempered|one-token samples",
        ),
    ),
)
def _k1_in_loss_zero():
    from kltutor import gradients as G

    pi, ref = _toy()
    g = G.exact_kl_gradients(pi, ref, 5)["k1-in-loss"]
    _require(float(g.abs().max()) < 1e-12, "k1-in-loss must be zero in expectation")
    return {"max |expected gradient|, T = 5": "< 1e-12"}


@_claim(
    "k2-in-loss",
    "Placements",
    r"k2 in the loss follows the reverse-KL gradient for one token, and for sequence-level k2 "
    r"$\tfrac12(\sum_t\ell_t)^2$ at any length. Token-level k2 on sequences of $T>1$ tokens is biased: it misses "
    r"the cross terms $\E[g_t\ell_s]$, $s>t$.",
    r"samples from $\pitheta$",
    "sec-placements-exact",
    cheatsheet=True,
    needs_condition=(
        (
            r"k2[- ]in[- ](?:the )?loss`?[^.;|]{0,40}?\b(?:follows?|gives?|give|equals?|agrees?|agree|delivers?|matches|is exact)\b",
            r"one token|one-token|single token|single-step|for a token|sequence-level|summed|T\s*=\s*1|T>1|T > 1|"
            r"per-token|per token|token-level|token-local|not for",
        ),
    ),
)
def _k2_in_loss():
    from kltutor import gradients as G

    pi, ref = _toy()
    one = G.exact_kl_gradients(pi, ref, 1)
    tok = G.exact_kl_gradients(pi, ref, 5, level="token")
    seq = G.exact_kl_gradients(pi, ref, 5, level="sequence")
    _require(_max_err(one["k2-in-loss"], one["true"]) < 1e-12, "T = 1")
    _require(_max_err(seq["k2-in-loss"], seq["true"]) < 1e-12, "sequence-level k2")
    bias = _max_err(tok["k2-in-loss"], tok["true"])
    _require(bias > 0.1, "token-level k2 must be biased at T = 5")
    from kltutor.derivations import placements as placements_proofs

    _require(
        placements_proofs.one_token_k2_loss_equals_k1_reward() and placements_proofs.token_k2_misses_cross_terms(),
        "sympy",
    )
    return {"token-level k2, T = 5: largest gradient error": bias, "T = 1 or sequence-level k2": "exact (< 1e-12)"}


@_claim(
    "k3-in-loss-forward",
    "Placements",
    r"On-policy, token-level k3 in the loss follows $\sum_t\E_{s_t\sim\pitheta}\big[\nabla\KL(\piref(\cdot|s_t)\|\pitheta(\cdot|s_t))\big]$: "
    r"the forward KL *per token, at the policy's own prefixes*, with no gradient through which prefixes are visited. "
    r"For one token that is $\nabla\KL(\piref\|\pitheta)$; on sequences it is neither the reverse- nor the "
    r"forward-KL gradient of the sequence. k3 of the summed log-ratio gives the sequence forward-KL gradient.",
    r"samples from $\pitheta$",
    "sec-placements-mistakes",
    cheatsheet=True,
    needs_condition=(
        (
            r"k3[- ]in[- ](?:the )?loss`?[^.;|]{0,80}?\b(?:follows?|gives?|has|is|agrees?)\b[^.;|]{0,60}?forward[- ]KL",
            r"one token|one-token|single token|per[- ]token|prefix|sequence-level|states|for a token|"
            r"T\s*=\s*1|token-level|summed",
        ),
    ),
)
def _k3_in_loss_forward():
    import torch

    from kltutor import gradients as G
    from kltutor.derivations import placements as placements_proofs
    from kltutor.toys.autoregressive import all_binary_sequences

    _require(
        placements_proofs.k3_in_loss_is_forward_kl_gradient() and placements_proofs.placement_gradients(),
        "sympy, one token",
    )
    pi, ref = _toy()
    T = 5
    tok = G.exact_kl_gradients(pi, ref, T, level="token")
    seq = G.exact_kl_gradients(pi, ref, T, level="sequence")
    seqs = all_binary_sequences(T)
    with torch.no_grad():
        w = pi.sequence_logprobs(seqs).exp()
        q_seq = ref.sequence_logprobs(seqs).exp()
        r1 = torch.sigmoid(ref.logits(seqs))
    p1 = torch.sigmoid(pi.logits(seqs))
    fwd_t = r1 * (r1.log() - p1.log()) + (1 - r1) * ((1 - r1).log() - (1 - p1).log())
    g_tok_fwd = torch.stack(torch.autograd.grad((w[:, None] * fwd_t).sum(), [pi.a, pi.b]))
    g_seq_fwd = torch.stack(torch.autograd.grad(-(q_seq * pi.sequence_logprobs(seqs)).sum(), [pi.a, pi.b]))
    _require(_max_err(tok["k3-in-loss"], g_tok_fwd) < 1e-12, "token-level k3 = per-token forward KL at policy prefixes")
    _require(_max_err(seq["k3-in-loss"], g_seq_fwd) < 1e-12, "sequence-level k3 = sequence forward KL")
    off_fwd, off_rev = _max_err(tok["k3-in-loss"], g_seq_fwd), _max_err(tok["k3-in-loss"], tok["true"])
    _require(off_fwd > 0.05 and off_rev > 0.1, "token-level k3 is neither sequence gradient")
    return {
        "T = 5, token-level k3 vs sequence forward-KL gradient": off_fwd,
        "T = 5, token-level k3 vs reverse-KL gradient": off_rev,
    }


@_claim(
    "offpolicy-prefix-weight",
    "Placements",
    r"On stale samples (from $\piold$), a per-token importance weight $w_t$ makes an in-loss KL term exact "
    r"for one token only; on sequences the prefix product $\prod_{s\le t}w_s$ is needed.",
    r"samples from $\piold\neq\pitheta$ (several updates per batch)",
    "sec-placements-off-policy",
    needs_condition=(
        (
            r"importance weight[^.;]*(?:each|every|per)[- ](?:term|token)|(?:per-token|each token)[^.;]*importance weight",
            r"prefix|one token|single token|single-step|not enough|only",
        ),
    ),
)
def _offpolicy_prefix_weight():
    from kltutor import gradients as G
    from kltutor.toys import BinaryAutoregressive

    pi, ref = _toy()
    old = BinaryAutoregressive(0.1, -0.1)
    t1 = _max_err(
        G.offpolicy_kl_loss_gradient(pi, old, ref, 1, "k3", "token"), G.exact_kl_gradients(pi, ref, 1)["true"]
    )
    t5 = _max_err(
        G.offpolicy_kl_loss_gradient(pi, old, ref, 5, "k3", "token"), G.exact_kl_gradients(pi, ref, 5)["true"]
    )
    p5 = _max_err(
        G.offpolicy_kl_loss_gradient(pi, old, ref, 5, "k3", "prefix"), G.exact_kl_gradients(pi, ref, 5)["true"]
    )
    _require(t1 < 1e-12 and p5 < 1e-12 and t5 > 0.05, "importance weights")
    return {"T = 5, per-token weight: gradient error": t5, "T = 1 per-token, T = 5 prefix weight": "exact (< 1e-12)"}


@_claim(
    "clip-removes-in-reward-kl",
    "Placements",
    r"When PPO's clipped branch is the minimum for a token, its whole gradient is zero, KL penalty included; "
    r"a KL term in the loss keeps its gradient.",
    "KL in the reward, several updates per batch",
    "sec-placements-clipping",
)
def _clip_removes_in_reward_kl():
    import torch

    from kltutor import placements as pl

    D = torch.float64
    logp = torch.tensor([[-0.40, -1.10, -0.70]], dtype=D, requires_grad=True)
    old_logp = torch.tensor([[-0.80, -1.05, -0.70]], dtype=D)
    ref_logp = torch.tensor([[-0.10, -0.60, -0.20]], dtype=D)
    mask = torch.ones_like(old_logp)
    rewards = pl.shaped_rewards(torch.tensor([0.0], dtype=D), logp, ref_logp, mask, 0.5, estimator="k1")
    adv = pl.returns_to_go(rewards, mask)
    surr, _ = pl.clipped_surrogate(logp, old_logp, adv, mask, clip_eps=0.2)
    (g_reward,) = torch.autograd.grad(surr, logp)
    (g_loss,) = torch.autograd.grad(0.5 * pl.kl_loss(logp, ref_logp, mask, "k3"), logp)
    _require(g_reward[0, 0].item() == 0.0 and adv[0, 0].item() > 0 and g_loss[0, 0].item() != 0.0, "clipping")
    return {
        "gradient of the clipped token (KL in reward)": 0.0,
        "its gradient with k3 in the loss": g_loss[0, 0].item(),
    }
