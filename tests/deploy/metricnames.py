"""Names of the time series the runtime and the operator export, from their real
registries (families expanded into the sample names Prometheus stores)."""

from __future__ import annotations

import re

from prometheus_client import REGISTRY

SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                             "_created"),
            "gauge": ("",), "info": ("_info",), "summary": ("_sum", "_count", "_created")}


def registered() -> set[str]:
    import xrayvision.metrics  # noqa: F401 - registers the runtime's metrics
    import xrayvision_operator.metrics  # noqa: F401 - and the operator's

    names = set()
    for family in REGISTRY.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


FUNCTIONS = {"sum", "max", "min", "avg", "count", "rate", "increase", "delta", "deriv",
             "histogram_quantile", "by", "without", "on", "ignoring", "and", "or", "unless",
             "time", "hour", "day_of_week", "clamp_min", "clamp_max", "abs", "topk", "le",
             "irate", "sort_desc", "label_replace", "vector", "scalar", "bool", "offset",
             "group_left", "group_right", "absent", "changes", "resets", "round",
             "count_over_time", "max_over_time", "avg_over_time", "sum_over_time"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (identifiers starting xrayvision_)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    return set(re.findall(r"\bxrayvision_[a-z0-9_]+\b", without_strings))
