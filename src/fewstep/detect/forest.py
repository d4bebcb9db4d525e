"""A fitted random forest as plain arrays: saved in safetensors (no pickle), evaluated without scikit-learn.

scikit-learn (the optional extra ``fewstep[detect]``) fits the forest (Breiman 2001), as multiLID does; its trees
are copied into flat arrays (children, split feature, threshold, class-1 fraction per node) and
:func:`forest_proba` walks them, giving exactly ``RandomForestClassifier.predict_proba(x)[:, 1]``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fit_forest", "forest_proba", "FOREST_KEYS"]

FOREST_KEYS = ("left", "right", "feature", "threshold", "p1", "roots")


def fit_forest(x: np.ndarray, y: np.ndarray, *, trees: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """Fit a random forest (``trees`` trees, default scikit-learn settings otherwise) on features ``x`` ``(n, F)``
    and 0/1 labels ``y``; return it as flat arrays (:data:`FOREST_KEYS`)."""
    try:
        from sklearn.ensemble import RandomForestClassifier
    except ImportError as err:
        raise ModuleNotFoundError("fitting a detector needs scikit-learn: pip install 'fewstep[detect]'") from err
    if set(np.unique(y).tolist()) != {0, 1}:
        raise ValueError("fitting a detector needs images of both kinds (real and generated)")
    rf = RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=1).fit(x, y)
    left, right, feature, threshold, p1, roots = [], [], [], [], [], []
    offset = 0
    for est in rf.estimators_:
        t = est.tree_
        value = t.value[:, 0, :].astype(np.float64)
        is_leaf = t.children_left < 0
        left.append(np.where(is_leaf, -1, t.children_left + offset))
        right.append(np.where(is_leaf, -1, t.children_right + offset))
        feature.append(np.where(is_leaf, 0, t.feature))
        threshold.append(t.threshold.astype(np.float64))
        p1.append(value[:, list(rf.classes_).index(1)] / value.sum(1))
        roots.append(offset)
        offset += t.node_count
    cat = np.concatenate
    return {"left": cat(left).astype(np.int64), "right": cat(right).astype(np.int64),
            "feature": cat(feature).astype(np.int64), "threshold": cat(threshold),
            "p1": cat(p1), "roots": np.asarray(roots, dtype=np.int64)}


def forest_proba(forest: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The forest's mean class-1 probability ``(n,)`` for features ``x`` ``(n, F)`` (float32 splits, as
    scikit-learn compares)."""
    x = np.asarray(x, dtype=np.float32)
    left, right, feature = forest["left"], forest["right"], forest["feature"]
    threshold, p1 = forest["threshold"], forest["p1"]
    rows = np.arange(len(x))
    total = np.zeros(len(x))
    for root in forest["roots"]:
        node = np.full(len(x), root, dtype=np.int64)
        active = left[node] >= 0
        while active.any():
            n = node[active]
            go_left = x[rows[active], feature[n]] <= threshold[n]
            node[active] = np.where(go_left, left[n], right[n])
            active = left[node] >= 0
        total += p1[node]
    return total / len(forest["roots"])
