"""Off-policy evaluation: IPS, capped IPS, SNIPS, doubly robust, effective sample size, bootstrap CIs.

Plain NumPy functions (``topkrec.ope.estimators``); ``topkrec ope`` is the command around them.
"""

from topkrec.ope.estimators import (
    DEFAULT_CAP,
    BootstrapResult,
    OpeReport,
    bootstrap_ci,
    capped_ips,
    check_inputs,
    doubly_robust,
    effective_sample_size,
    importance_weights,
    ips,
    off_policy_report,
    snips,
)

__all__ = [
    "DEFAULT_CAP",
    "BootstrapResult",
    "OpeReport",
    "bootstrap_ci",
    "capped_ips",
    "check_inputs",
    "doubly_robust",
    "effective_sample_size",
    "importance_weights",
    "ips",
    "off_policy_report",
    "snips",
]
