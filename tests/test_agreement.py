import datetime as dt

import pytest

from xrayvision.agreement import Confusion, classify, confusion, period_start, roll_up


@pytest.mark.parametrize(("ai", "rad", "expected"), [
    (7, 5, "TP"), (5, 5, "TP"), (4, 0, "TN"), (0, 4, "TN"), (6, 2, "FP"), (4, 9, "FN"),
    (-1, 8, None), (8, -1, None), (-1, -1, None),
])
def test_classify_at_threshold_5(ai, rad, expected):
    assert classify(ai, rad, 5) == expected


def test_hand_computed_matrix_keeps_not_assessed_apart():
    pairs = [(8, 7), (6, 9), (5, 5),          # TP x3
             (0, 1), (2, 0), (4, 4), (1, 3),  # TN x4
             (7, 2),                          # FP x1
             (3, 6), (0, 10),                 # FN x2
             (-1, 6), (9, -1), (-1, -1)]      # not assessed x3
    c = confusion(pairs, 5)
    assert (c.tp, c.tn, c.fp, c.fn, c.not_assessed) == (3, 4, 1, 2, 3)
    assert c.assessed == 10
    assert c.sensitivity == pytest.approx(3 / 5)
    assert c.specificity == pytest.approx(4 / 5)
    assert c.ppv == pytest.approx(3 / 4)
    assert c.npv == pytest.approx(4 / 6)
    assert c.f1 == pytest.approx(6 / 9)
    assert c.accuracy == pytest.approx(7 / 10)
    assert c.as_dict()["not_assessed"] == 3


def test_threshold_moves_classes():
    pairs = [(6, 7), (4, 7), (6, 3)]
    assert confusion(pairs, 5) == Confusion(tp=1, fn=1, fp=1)
    assert confusion(pairs, 7) == Confusion(tn=1, fn=2)


def test_empty_ratios_are_none_not_zero():
    c = confusion([(-1, 3)], 5)
    assert c.assessed == 0 and c.not_assessed == 1
    assert c.sensitivity is None and c.specificity is None and c.f1 is None
    only_negatives = confusion([(1, 1), (2, 2)], 5)
    assert only_negatives.sensitivity is None and only_negatives.specificity == 1.0


def test_periods_and_roll_up():
    wed = dt.date(2026, 11, 25)
    assert period_start(wed, "day") == wed
    assert period_start(wed, "week") == dt.date(2026, 11, 23)
    assert period_start(wed, "month") == dt.date(2026, 11, 1)
    with pytest.raises(ValueError, match="period"):
        period_start(wed, "year")
    days = {"2026-11-22": Confusion(tp=1), "2026-11-23": Confusion(fn=2),
            "2026-11-29": Confusion(tn=1, not_assessed=1), "2026-12-01": Confusion(fp=1)}
    assert roll_up(days, "week") == {
        "2026-11-16": Confusion(tp=1),
        "2026-11-23": Confusion(fn=2, tn=1, not_assessed=1),
        "2026-11-30": Confusion(fp=1),
    }
    assert roll_up(days, "month") == {"2026-11-01": Confusion(tp=1, fn=2, tn=1, not_assessed=1),
                                      "2026-12-01": Confusion(fp=1)}
    assert list(roll_up(days, "day")) == sorted(days)


def test_figures_add_up_and_summarise():
    from xrayvision.agreement import Figures

    day1 = Figures(ai={7: 1, -1: 1}, rad={8: 1}, pairs={(7, 8): 1}, reviews={1: 1, -1: 1},
                   latency={"primary": (3.0, 2)})
    day2 = Figures(ai={2: 1}, rad={1: 1, -1: 1}, pairs={(2, 1): 1, (2, -1): 1},
                   reviews={0: 1}, latency={"primary": (1.0, 1), "secondary": (0.5, 1)})
    both = day1 + day2
    assert both.severity("ai")[7] == 1 and both.severity("ai")[2] == 1
    assert both.severity("rad") == {**dict.fromkeys(range(-1, 11), 0), -1: 1, 1: 1, 8: 1}
    assert both.confusion(5) == Confusion(tp=1, tn=1, not_assessed=1)
    assert both.confusion(8) == Confusion(tn=1, fn=1, not_assessed=1)  # a threshold later
    assert both.review_counts() == {"correct": 1, "incorrect": 1, "not_reviewed": 1}
    assert both.model() == {"primary": {"avg_seconds": 1.333, "reports": 3},
                            "secondary": {"avg_seconds": 0.5, "reports": 1}}
    assert Figures() + Figures() == Figures(latency={})
