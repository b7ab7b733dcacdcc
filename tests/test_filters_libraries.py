"""The installed TRL / verl / OpenRLHF rejection filters on the exact toy, against the stored verdicts.

`make trainers-test` runs this file in .venv-trainers; without the libraries it skips. Regenerate the stored
file with `python -m kltutor.trainers.filters regenerate` after an upgrade and review chapter 8's section
"KL estimators as rejection filters" (sec-practice-filters).
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from kltutor import filters as F
from kltutor.trainers import filters as TF

pytestmark = pytest.mark.trainers

HAVE = all(importlib.util.find_spec(m) is not None for m in ("trl", "verl", "openrlhf"))
need = pytest.mark.skipif(
    not HAVE, reason="TRL, verl and OpenRLHF are not installed (make trainers-test installs them)"
)


@pytest.fixture(scope="module")
def fresh():
    if not HAVE:
        pytest.skip("libraries not installed")
    return TF.compute()


@need
def test_libraries_match_stored_verdicts(fresh):
    diffs = TF.compare(fresh, TF.load())
    assert not diffs, "\n".join(diffs)


@need
def test_library_masks_equal_our_statement_of_each_rule(fresh):
    """kltutor.filters.keep_masks states each rule; the library's own function keeps exactly the same tokens."""
    b = F.toy_batch()
    for r in fresh["rules"]:
        ours = F.keep_masks(r["rule"], b["logp"], b["samp_logp"], b["adv"])
        assert ["".join(str(int(v)) for v in row) for row in ours.long().tolist()] == r["keep"], r["rule"]
        if "coefficient_equals_ours" in r:  # OpenRLHF: keep x per-token ratio, read off its loss's gradient
            assert r["coefficient_equals_ours"], r["rule"]


@need
def test_every_rule_rejects_something_except_the_ratio_band(fresh):
    by = {r["rule"]: r for r in fresh["rules"]}
    assert by["openrlhf.seq.ratio"]["sequences_touched"] == 0  # geometric mean of pi/q stays inside [0.5, 5]
    for name, r in by.items():
        if name != "openrlhf.seq.ratio":
            assert r["sequences_touched"] > 0 and r["bias_norm"] > 0.01, name


@need
def test_opsm_drops_only_negative_advantages(fresh):
    """TRL's get_off_policy_mask (DeepSeek-V3.2): no positive-advantage sequence is ever dropped."""
    b = F.toy_batch()
    keep = [row[0] == "1" for row in {r["rule"]: r for r in fresh["rules"]}["trl.opsm"]["keep"]]
    dropped = [i for i, k in enumerate(keep) if not k]
    assert dropped and all(float(b["adv"][i]) < 0 for i in dropped)


@need
def test_verl_k1_bounds_apply_to_the_inverse_ratio():
    """verl's token_k1 statistic is log(q/pi) (= -log_ratio): an asymmetric band [lo, hi] bounds q/pi, not pi/q."""
    from verl.trainer.ppo.rollout_corr_helper import compute_rollout_rejection_mask

    log_ratio = torch.tensor(
        [[torch.log(torch.tensor(1.5)).item(), torch.log(torch.tensor(1 / 1.5)).item()]], dtype=torch.float64
    )  # pi/q = 1.5 and 1/1.5
    out, _ = compute_rollout_rejection_mask(log_ratio, torch.ones_like(log_ratio), "token_k1", "0.8_1.6")
    # band [0.8, 1.6] on q/pi: pi/q = 1.5 means q/pi = 0.667 < 0.8 -> rejected; pi/q = 0.667 means q/pi = 1.5 -> kept
    assert out.tolist() == [[0.0, 1.0]]


@pytest.mark.parametrize("library,path,fragment", TF.SOURCE_FRAGMENTS)
def test_source_fragments(library, path, fragment):
    """What the chapter says about code that cannot run here (TRL's inline sequence_mask) is in the installed source."""
    spec = importlib.util.find_spec({"TRL": "trl", "verl": "verl", "OpenRLHF": "openrlhf"}[library])
    if spec is None:
        pytest.skip(f"{library} not installed")
    root = Path(spec.origin).parent.parent
    assert fragment in (root / path).read_text(), (library, path, fragment)
