import pytest

from kltutor.derivations import placements as D, registry


@pytest.mark.parametrize("name", [
    "zero_mean_score", "estimator_gradients", "score_function_kl_gradient",
    "k3_in_loss_is_forward_kl_gradient", "one_token_k2_loss_equals_k1_reward",
    "return_to_go_equivalence", "token_k2_misses_cross_terms",
])
def test_derivation_holds(name):
    assert getattr(D, name)() is True
    assert f"placements.{name}" in registry()
