"""select_inference on bad validation data: a clear error (or warning) instead of a riddle.

The scores and the choice are compared with plain loops at the end of the file.
"""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
from _references import ref_balanced_mae, ref_combine

from dirloss import GroupBinner, InferenceChoice, MultiExpertHead, select_inference


def make_case(num_groups=4, n=60, in_features=3):
    binner = GroupBinner(num_groups).fit(torch.rand(300))
    head = MultiExpertHead(in_features, num_groups)
    return head, binner, torch.randn(n, in_features), torch.rand(n)


def assert_untouched(head):
    assert head.inference == "soft" and head.tau == 0.0


@pytest.mark.parametrize("target_shape", [(0,), (0, 1)])
def test_empty_validation_set_names_the_shapes(target_shape):
    head, binner, _, _ = make_case()
    features, target = torch.randn(0, 3), torch.rand(target_shape)
    expected = (
        "expected at least one validation row, got features of shape (0, 3) and target of "
        f"shape {target_shape}"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        select_inference(head, features, target, binner)
    assert_untouched(head)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_targets_say_which_and_how_many(bad):
    head, binner, features, target = make_case()
    target[[3, 7]] = bad
    with pytest.raises(
        ValueError,
        match=r"expected finite validation targets, got 2 NaN/inf of 60 values "
        r"\(in 2 of 60 rows: 3, 7\)",
    ):
        select_inference(head, features, target, binner)
    assert_untouched(head)


def test_non_finite_features_say_which_and_how_many():
    head, binner, features, target = make_case()
    features[:, 1] = float("nan")  # a whole column: every row, the rows listed up to 5
    with pytest.raises(
        ValueError,
        match=r"expected finite validation features, got 60 NaN/inf of 180 values "
        r"\(in 60 of 60 rows: 0, 1, 2, 3, 4, \.\.\.\)",
    ):
        select_inference(head, features, target, binner)
    assert_untouched(head)


def test_non_finite_column_target():
    head, binner, features, target = make_case()
    target = target[:, None].clone()
    target[5, 0] = float("nan")
    with pytest.raises(ValueError, match=r"targets, got 1 NaN/inf of 60 values \(in 1 of 60"):
        select_inference(head, features, target, binner)


def test_binner_head_group_mismatch():
    _, binner, features, target = make_case(num_groups=8)
    head = MultiExpertHead(3, 10)
    with pytest.raises(
        ValueError,
        match="expected a binner with the head's number of groups, but the binner has 8 "
        "groups and the head has 10",
    ):
        select_inference(head, features, target, binner)
    assert_untouched(head)


def test_unfitted_binner():
    head, _, features, target = make_case()
    with pytest.raises(ValueError, match="expected a fitted GroupBinner"):
        select_inference(head, features, target, GroupBinner(4))


@pytest.mark.parametrize("shape", [(60,), (60, 5), (60, 3, 1)])
def test_bad_feature_shape(shape):
    head, binner, _, target = make_case()
    with pytest.raises(ValueError, match=r"expected features of shape \(N, 3\), got"):
        select_inference(head, torch.randn(shape), target, binner)


@pytest.mark.parametrize("n", [1, 2, 5, 19])
def test_too_few_rows_warn_but_tune(n):
    head, binner, features, target = make_case(n=n)  # 4 bins: the warning is below 20 rows
    with pytest.warns(UserWarning, match=f"got {n} validation rows for 4 bins"):
        choice = select_inference(head, features, target, binner)
    assert (head.inference, head.tau) == (choice.inference, choice.tau)


def test_minimum_counts_the_bins_of_bin_edges():
    head, binner, features, target = make_case(n=12)  # 12 rows, 2 bins: enough
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        select_inference(head, features, target, binner, bin_edges=torch.tensor([0.0, 0.5, 1.0]))
    with pytest.warns(UserWarning, match="got 12 validation rows for 4 bins"):
        select_inference(head, features, target, binner)


def test_enough_rows_do_not_warn():
    head, binner, features, target = make_case(n=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        select_inference(head, features, target, binner)


# ---------------------------------------------------------------------------------------------
# select_inference against plain loops (moved from test_recipe.py)
# ---------------------------------------------------------------------------------------------
def ref_log_prior(counts):
    c = [max(float(v), 1.0) for v in counts]
    return [math.log(v / sum(c)) for v in c]


def ref_candidate_predictions(logits, experts, target, counts, candidates, top_k=3):
    """``(y, {(inference, tau): predictions})`` of every candidate, from the loops above."""
    log_prior = ref_log_prior(counts)
    y = [float(v) for v in target.reshape(-1).tolist()]
    preds = {}
    for inference, tau in candidates:
        adjustment = torch.tensor([tau * v for v in log_prior], dtype=torch.float64)
        rows = ref_combine(logits, experts, inference, adjustment, top_k)
        preds[(inference, float(tau))] = [row[0] for row in rows]
    return y, preds


def ref_scores(logits, experts, target, counts, edges, candidates, top_k=3):
    """{(inference, tau): (bMAE, MAE)} of every candidate."""
    y, preds = ref_candidate_predictions(logits, experts, target, counts, candidates, top_k)
    scores = {}
    for key, pred in preds.items():
        mae = sum(abs(p - t) for p, t in zip(pred, y)) / len(y)
        scores[key] = (ref_balanced_mae(pred, y, edges), mae)
    return scores


def ref_pick(scores, metric="bmae", max_mae_increase=None):
    """The lowest metric among the candidates whose MAE is within the guard; ties: earliest."""
    best_mae = min(mae for _, mae in scores.values())
    limit = math.inf if max_mae_increase is None else best_mae * (1 + max_mae_increase)
    index = 0 if metric == "bmae" else 1
    best = None
    for key, value in scores.items():  # in candidate order
        if value[1] <= limit and (best is None or value[index] < scores[best][index]):
            best = key
    return best


def make_selection_case(num_groups=5, n_val=120):
    """A trained-looking head whose inference settings give different validation scores."""
    train = torch.rand(500, dtype=torch.float64) ** 3 * 10  # long-tailed toward high labels
    binner = GroupBinner(num_groups).fit(train)
    head = MultiExpertHead(3, num_groups, dtype=torch.float64)
    with torch.no_grad():
        centers = binner.centers.to(torch.float64)
        head.base.weight.zero_()
        head.base.bias.zero_()
        head.experts.weight.normal_(0.0, 0.3)
        head.experts.bias.copy_(centers)  # expert g predicts about its group's center
        head.classifier.weight.normal_(0.0, 2.0)
        head.classifier.bias.copy_(binner.counts.double().clamp_min(1).log())
    features = torch.randn(n_val, 3, dtype=torch.float64)
    target = torch.rand(n_val, dtype=torch.float64) ** 2 * 10
    return head, binner, features, target


CANDIDATES = [("soft", 0.0), ("soft", 0.5), ("argmax", 0.0), ("argmax", 0.5), ("soft", 1.0)]


@pytest.mark.parametrize("top_k", [2, 4])
def test_select_inference_scores_topk_with_the_heads_top_k(top_k):
    head, binner, features, target = make_selection_case()
    head.top_k = top_k
    candidates = [("topk", 0.0), ("topk", 0.5), ("soft", 0.0)]
    with torch.no_grad():
        out = head(features)
    scores = ref_scores(out.logits, out.experts, target, binner.counts.tolist(),
                        binner.edges.tolist(), candidates, top_k)
    choice = select_inference(head, features, target, binner, candidates=candidates)
    for key, (bmae, mae) in scores.items():
        assert math.isclose(choice.scores[key][0], bmae, rel_tol=1e-9), key
        assert math.isclose(choice.scores[key][1], mae, rel_tol=1e-9), key
    assert (choice.inference, choice.tau) == ref_pick(scores, "bmae", 0.02)
    assert head.top_k == top_k  # selection sets inference and tau, never top_k


@pytest.mark.parametrize("metric", ["bmae", "mae"])
@pytest.mark.parametrize("guard", [None, 0.02, 0.2])
def test_select_inference_matches_loop(metric, guard):
    head, binner, features, target = make_selection_case()
    with torch.no_grad():
        out = head(features)
    scores = ref_scores(
        out.logits, out.experts, target, binner.counts.tolist(), binner.edges.tolist(), CANDIDATES
    )
    choice = select_inference(
        head, features, target, binner, candidates=CANDIDATES, metric=metric,
        max_mae_increase=guard,
    )
    assert isinstance(choice, InferenceChoice)
    assert list(choice.scores) == list(scores)
    for key, (bmae, mae) in scores.items():
        assert math.isclose(choice.scores[key][0], bmae, rel_tol=1e-9), key
        assert math.isclose(choice.scores[key][1], mae, rel_tol=1e-9), key
    expected = ref_pick(scores, metric, guard)
    assert (choice.inference, choice.tau) == expected
    assert math.isclose(choice.score, scores[expected][0 if metric == "bmae" else 1], rel_tol=1e-9)
    # the head is left with the chosen setting
    assert head.inference == choice.inference and head.tau == choice.tau
    with torch.no_grad():
        pred = head(features).prediction
    adjustment = torch.tensor(ref_log_prior(binner.counts.tolist()), dtype=torch.float64)
    expected_pred = ref_combine(out.logits, out.experts, choice.inference, choice.tau * adjustment)
    torch.testing.assert_close(pred, torch.tensor(expected_pred, dtype=torch.float64))


def test_select_inference_picks_lowest_bmae_without_guard():
    head, binner, features, target = make_selection_case()
    choice = select_inference(
        head, features, target, binner, candidates=CANDIDATES, max_mae_increase=None
    )
    assert choice.score == min(bmae for bmae, _ in choice.scores.values())


def guard_case():
    """Two groups (90 / 10 training samples). Validation: 80 majority samples the classifier
    gets right at any tau, 20 majority samples it gets wrong with tau = 1, and 10 minority
    samples it gets right only with tau = 1. tau = 1 halves the balanced MAE (0.5 -> 0.1) but
    doubles the MAE (10/110 -> 20/110)."""
    binner = GroupBinner(2, edges=[-0.5, 0.5, 1.5])
    binner.fit(torch.cat([torch.zeros(90), torch.ones(10)]))
    head = MultiExpertHead(1, 2, inference="soft", residual=False, dtype=torch.float64)
    with torch.no_grad():
        head.classifier.weight.copy_(torch.tensor([[0.0], [1.0]]))  # logits [0, x]
        head.classifier.bias.zero_()
        head.experts.weight.zero_()
        head.experts.bias.copy_(torch.tensor([0.0, 1.0]))  # expert g predicts g
    x = torch.tensor([-3.0] * 80 + [-1.5] * 20 + [-0.5] * 10, dtype=torch.float64)[:, None]
    y = torch.tensor([0.0] * 100 + [1.0] * 10, dtype=torch.float64)
    return head, binner, x, y


def test_select_inference_mae_guard():
    candidates = [("argmax", 0.0), ("argmax", 1.0)]
    head, binner, x, y = guard_case()
    choice = select_inference(head, x, y, binner, candidates=candidates, max_mae_increase=0.02)
    bmae_plain, mae_plain = choice.scores[("argmax", 0.0)]
    bmae_adjusted, mae_adjusted = choice.scores[("argmax", 1.0)]
    assert math.isclose(bmae_plain, 0.5) and math.isclose(mae_plain, 10 / 110)
    assert math.isclose(bmae_adjusted, 0.1) and math.isclose(mae_adjusted, 20 / 110)
    # the lowest balanced MAE costs 100% more MAE: not chosen under a 2% guard ...
    assert (choice.inference, choice.tau) == ("argmax", 0.0) and head.tau == 0.0
    assert math.isclose(choice.score, 0.5)
    # ... nor under the default guard, whatever its value below 100%
    assert select_inference(head, x, y, binner, candidates=candidates).tau == 0.0
    # chosen without the guard, or with a guard wide enough
    for guard in (None, 1.5):
        choice = select_inference(head, x, y, binner, candidates=candidates, max_mae_increase=guard)
        assert (choice.inference, choice.tau) == ("argmax", 1.0) and head.tau == 1.0
        assert head.inference == "argmax"
        with torch.no_grad():
            pred = head(x).prediction.reshape(-1)
        assert torch.equal(pred, torch.tensor([0.0] * 80 + [1.0] * 30, dtype=torch.float64))


def test_select_inference_ties_go_to_the_earlier_candidate():
    head, binner, x, y = guard_case()
    candidates = [("argmax", 0.0), ("soft", 0.0), ("argmax", 0.0)]
    # a fresh head with zero experts: every candidate scores the same
    with torch.no_grad():
        head.experts.bias.zero_()
    choice = select_inference(head, x, y, binner, candidates=candidates)
    assert (choice.inference, choice.tau) == ("argmax", 0.0)


def test_select_inference_bin_edges():
    head, binner, features, target = make_selection_case()
    edges = torch.tensor([0.0, 2.0, 4.0, 10.0], dtype=torch.float64)
    choice = select_inference(
        head, features, target, binner, candidates=CANDIDATES, bin_edges=edges,
        max_mae_increase=None,
    )
    with torch.no_grad():
        out = head(features)
    scores = ref_scores(
        out.logits, out.experts, target, binner.counts.tolist(), edges.tolist(), CANDIDATES
    )
    for key, (bmae, _) in scores.items():
        assert math.isclose(choice.scores[key][0], bmae, rel_tol=1e-9), key


def test_select_inference_leaves_weights_and_grad_alone():
    head, binner, features, target = make_selection_case()
    before = {k: v.clone() for k, v in head.named_parameters()}
    features.requires_grad_()
    select_inference(head, features, target, binner)
    for k, v in head.named_parameters():
        assert torch.equal(v, before[k]) and v.grad is None, k
    assert features.grad is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"metric": "rmse"}, "metric"),
        ({"candidates": []}, "candidate"),
        ({"candidates": [("mean", 0.0)]}, "inference"),
        ({"candidates": [("soft", -1.0)]}, "tau"),
        ({"candidates": [("soft", float("nan"))]}, "tau"),
        ({"max_mae_increase": -0.1}, "max_mae_increase"),
        ({"max_mae_increase": float("inf")}, "max_mae_increase"),
    ],
)
def test_select_inference_bad_arguments(kwargs, match):
    head, binner, features, target = make_selection_case()
    with pytest.raises(ValueError, match=match):
        select_inference(head, features, target, binner, **kwargs)
    assert head.inference == "soft" and head.tau == 0.0  # untouched


def test_select_inference_bad_head_or_data():
    _, binner, features, target = make_selection_case()
    with pytest.raises(ValueError, match="out_features=1"):
        select_inference(MultiExpertHead(3, 5, 2), features.float(), target, binner)
    head = MultiExpertHead(3, 5)
    with pytest.raises(ValueError, match="one target per feature row"):
        select_inference(head, features.float(), target[:-1], binner)


# ---------------------------------------------------------------------------------------------
# The tail operating point: metric="few" over the rare groups
# ---------------------------------------------------------------------------------------------
def ref_rare(counts, fraction=0.2):
    """Rare groups by the field's rule: n_g < f N / G, else n_g < N / G."""
    share = sum(counts) / len(counts)
    mask = [n < fraction * share for n in counts]
    return mask if any(mask) else [n < share for n in counts]


def ref_group_of(y, edges):
    """Group of a label: the last inner edge at or below it (ends clamp)."""
    g = 0
    for k, e in enumerate(edges[1:-1], start=1):
        if y >= e:
            g = k
    return g


def ref_few_scores(logits, experts, target, counts, edges, candidates):
    """{(inference, tau): mean over the rare groups present of the group's mean |error|}."""
    rare = ref_rare(counts)
    y, preds = ref_candidate_predictions(logits, experts, target, counts, candidates)
    out = {}
    for key, pred in preds.items():
        per_group = {}
        for p, t in zip(pred, y):
            g = ref_group_of(t, edges)
            if rare[g]:
                per_group.setdefault(g, []).append(abs(p - t))
        means = [sum(v) / len(v) for v in per_group.values()]
        out[key] = sum(means) / len(means) if means else math.nan
    return out


@pytest.mark.parametrize(("counts", "expected"), [
    ([500, 300, 160, 30, 10], [False, False, False, True, True]),
    ([30, 25, 25, 20], [False, False, False, True]),  # none below N/(5G): below N/G
    ([10, 10], [False, False]),  # uniform: no tail
    ([90, 0, 10], [False, True, False]),  # an empty group is rare (10 < 6.7 is not)
])
def test_rare_groups_by_hand(counts, expected):
    from dirloss.inference import rare_groups

    assert rare_groups(torch.tensor(counts)).tolist() == expected == ref_rare(counts)


@pytest.mark.parametrize("guard", [None, 0.02, 0.2])
def test_select_inference_few_matches_loop(guard):
    head, binner, features, target = make_selection_case(n_val=400)
    with torch.no_grad():
        out = head(features)
    counts, edges = binner.counts.tolist(), binner.edges.tolist()
    scores = ref_scores(out.logits, out.experts, target, counts, edges, CANDIDATES)
    few = ref_few_scores(out.logits, out.experts, target, counts, edges, CANDIDATES)
    assert any(ref_rare(counts)) and all(math.isfinite(v) for v in few.values())
    choice = select_inference(head, features, target, binner, candidates=CANDIDATES,
                              metric="few", max_mae_increase=guard)
    assert list(choice.few_scores) == list(few)
    for key, value in few.items():
        assert math.isclose(choice.few_scores[key], value, rel_tol=1e-9), key
    best_mae = min(m for _, m in scores.values())
    limit = math.inf if guard is None else best_mae * (1 + guard)
    allowed = [k for k in CANDIDATES if scores[k][1] <= limit]
    expected = min(allowed, key=lambda k: few[k])
    assert (choice.inference, choice.tau) == expected
    assert math.isclose(choice.score, few[expected], rel_tol=1e-9)
    assert (head.inference, head.tau) == expected


def test_select_inference_few_without_rare_validation_rows_raises():
    train = torch.cat([torch.rand(900) * 0.5, 0.5 + torch.rand(30) * 0.5])  # rare upper half
    binner = GroupBinner(2).fit(train)
    head = MultiExpertHead(3, num_groups=2)
    features, target = torch.randn(40, 3), torch.rand(40) * 0.4  # none in the rare group
    with pytest.raises(ValueError, match="metric='few' needs validation rows in the rare"):
        select_inference(head, features, target, binner, metric="few")
    assert_untouched(head)
    # the other metrics still score it, with NaN few-shot scores
    choice = select_inference(head, features, target, binner)
    assert all(math.isnan(v) for v in choice.few_scores.values())
